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

    /// A space the key may act on; another organization's is not found.
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
