//! Spaces and API keys: the use cases behind `sluice space …`, `sluice
//! apikey create` and the GraphQL face's `x-api-key`.

use super::*;

/// Who an API key acts for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyHolder {
    pub organization: OrganizationId,
    /// The one space the key may act on (None: all of its organization's).
    pub space: Option<SpaceId>,
}

impl KeyHolder {
    /// Whether this key may act on `space`.
    pub fn may_use(&self, space: &Space) -> bool {
        space.organization_id == self.organization
            && self.space.as_ref().is_none_or(|s| *s == space.id)
    }
}

impl Control {
    /// A new space of an organization.
    pub async fn create_space(
        &self,
        org: &str,
        name: &str,
        description: &str,
        private: bool,
    ) -> Result<Space> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        self.store.get_organization(&org).await?;
        let name = name.trim();
        if name.is_empty() {
            return Err(bad("a space needs a name"));
        }
        // The default space comes first in every list: it is made before
        // any other.
        self.store.default_space(&org, time::now()).await?;
        let space = Space {
            seq: 0,
            id: SpaceId::generate(),
            organization_id: org,
            name: name.to_owned(),
            description: description.to_owned(),
            private,
            is_default: false,
            created_at: time::now(),
        };
        self.store.create_space(&space).await.map_err(|e| match e {
            StoreError::Conflict(_) => {
                ControlError::Conflict(format!("the organization has a space `{name}` already"))
            }
            e => e.into(),
        })?;
        Ok(space)
    }

    /// The organization's default space (made on first need).
    pub async fn default_space(&self, org: &OrganizationId) -> Result<Space> {
        Ok(self.store.default_space(org, time::now()).await?)
    }

    /// The key's organization.
    pub async fn organization_of(&self, who: &KeyHolder) -> Result<Organization> {
        Ok(self.store.get_organization(&who.organization).await?)
    }

    /// The spaces of the key's organization it may act on, the default
    /// space first (it is made before any other, at the latest now).
    pub async fn spaces(
        &self,
        who: &KeyHolder,
        search: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Space>> {
        self.default_space(&who.organization).await?;
        let mut found = self
            .store
            .list_spaces(&who.organization, search, page)
            .await?;
        found.items.retain(|s| who.may_use(s));
        Ok(found)
    }

    /// A space's models.
    pub async fn models(
        &self,
        space: &Space,
        search: Option<&str>,
        page: PageRequest,
    ) -> Result<Page<Model>> {
        Ok(self.store.list_models(&space.id, search, page).await?)
    }

    /// A model of the key's organization (None: not there).
    pub async fn model(&self, who: &KeyHolder, id: &str) -> Result<Option<Model>> {
        let Ok(id) = ModelId::parse(id) else {
            return Ok(None);
        };
        match self.store.get_model(&id).await {
            Ok(m)
                if m.organization_id == who.organization
                    && who.space.as_ref().is_none_or(|s| *s == m.space_id) =>
            {
                Ok(Some(m))
            }
            Ok(_) | Err(StoreError::NotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The model a job feeds: the one recorded when it was made (label
    /// `modelId`), else the model its name and type make in its space.
    pub async fn job_model(&self, job: &ImportJob) -> Result<Model> {
        if let Some(id) = job.spec.labels.get("modelId").and_then(|v| v.as_str()) {
            if let Ok(id) = ModelId::parse(id) {
                return Ok(self.store.get_model(&id).await?);
            }
        }
        self.model_for_job(&job.organization_id, &job.space, &job.name, &job.spec)
            .await
    }

    /// The model named by a job's labels (`modelName`, `modelType`; else
    /// its name, `score_categorical`), made when new, in the job's space.
    pub(super) async fn model_for_job(
        &self,
        org: &OrganizationId,
        space: &str,
        name: &str,
        spec: &JobSpec,
    ) -> Result<Model> {
        let space = match SpaceId::parse(space) {
            Ok(s) => s,
            Err(_) => self.default_space(org).await?.id,
        };
        let label = |k: &str| spec.labels.get(k).and_then(|v| v.as_str());
        Ok(self
            .store
            .model_for(
                org,
                &space,
                label("modelName").unwrap_or(name),
                label("modelType").unwrap_or("score_categorical"),
                time::now(),
            )
            .await?)
    }

    /// A space's jobs (not deleted) whose name or id contains `search`,
    /// and how many there are.
    pub async fn space_jobs(
        &self,
        space: &Space,
        search: Option<String>,
        page: PageRequest,
    ) -> Result<(Page<ImportJob>, i64)> {
        let filter = sluice_store::JobFilter {
            organization: space.organization_id.clone(),
            space: Some(space.job_key()),
            search: search.filter(|s| !s.is_empty()),
            include_deleted: false,
        };
        Ok((
            self.store.list_jobs(&filter, page).await?,
            self.store.count_jobs(&filter).await?,
        ))
    }

    /// A space the key may act on; another organization's is not found.
    /// A job the key may act on: of its organization and, for a key of one
    /// space, of that space. Any other is "not found" (a key learns nothing
    /// of what it may not touch).
    pub async fn job_for_key(&self, who: &KeyHolder, id: &str) -> Result<ImportJob> {
        let job = self.get_job(&who.organization, id).await?;
        if let Some(only) = &who.space {
            let space = match SpaceId::parse(&job.space) {
                Ok(s) => s,
                Err(_) => self.default_space(&who.organization).await?.id,
            };
            if space != *only {
                return Err(ControlError::NotFound(format!("job `{id}` not found")));
            }
        }
        Ok(job)
    }

    pub async fn space_for(&self, who: &KeyHolder, id: &str) -> Result<Space> {
        let not_found = || ControlError::NotFound(format!("space `{id}` not found"));
        let id = SpaceId::parse(id).map_err(|_| not_found())?;
        let space = match self.store.get_space(&id).await {
            Ok(s) => s,
            Err(StoreError::NotFound(_)) => return Err(not_found()),
            Err(e) => return Err(e.into()),
        };
        if space.organization_id != who.organization {
            return Err(not_found());
        }
        if !who.may_use(&space) {
            return Err(ControlError::Forbidden(format!(
                "this API key may act on space {} only",
                who.space.as_ref().map(|s| s.as_str()).unwrap_or("?")
            )));
        }
        Ok(space)
    }

    /// A new API key: answers the key (shown once) and its record.
    pub async fn create_api_key(&self, org: &str, space: Option<&str>) -> Result<(String, ApiKey)> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        self.store.get_organization(&org).await?;
        let space_id = match space {
            Some(s) => {
                let holder = KeyHolder {
                    organization: org.clone(),
                    space: None,
                };
                Some(self.space_for(&holder, s).await?.id)
            }
            None => None,
        };
        let key = format!("ak-{}", hex::encode(auth::random_bytes(24)));
        let record = ApiKey {
            id: ApiKeyId::generate(),
            organization_id: org,
            space_id,
            key_hash: auth::token_hash(&key),
            created_at: time::now(),
        };
        self.store.create_api_key(&record).await?;
        Ok((key, record))
    }

    /// Checks an `x-api-key` header.
    pub async fn authenticate_api_key(&self, key: Option<&str>) -> Result<KeyHolder> {
        let key = key.filter(|k| !k.is_empty()).ok_or_else(|| {
            ControlError::Unauthorized("authentication required: send an x-api-key header".into())
        })?;
        match self.store.find_api_key(&auth::token_hash(key)).await? {
            Some(k) => Ok(KeyHolder {
                organization: k.organization_id,
                space: k.space_id,
            }),
            None => Err(ControlError::Unauthorized("invalid API key".into())),
        }
    }
}
