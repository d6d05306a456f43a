//! Which sources a job may read.
//!
//! A job made through an API face reads only what an administrator allowed:
//! a source declared for its organization (`sluice source add`, the URL
//! sealed like a job's connections) or one under the server's allow-list
//! (`--allow-source`), the URL or anything under it (another database on
//! the same server is not under it; a file in a declared folder is). When
//! the job's URL carries no password, the declared source's is used, so API
//! callers never need to hold it. The administrator's own commands (the
//! CLI) may name any source.
//!
//! Never a source, whoever asks: sluice's metadata store (its SQLite file,
//! or its PostgreSQL database, whatever user is named), anything under the
//! data dir (other runs, objects, the embedded warehouses) and system
//! catalogs (`pg_catalog`, `information_schema`, `mysql`, `sqlite_master`…).
//! Paths are compared after `..` and links are resolved.

use std::path::{Component, Path, PathBuf};

use super::*;
use crate::secrets::redact;

/// Where jobs may read; see the module's documentation.
#[derive(Debug, Clone, Default)]
pub struct SourcePolicy {
    /// URLs (and everything under them) any organization's jobs may read.
    pub allowed: Vec<String>,
    /// sluice's own folders: the data dir, the warehouse folder.
    pub private_dirs: Vec<PathBuf>,
    /// The metadata store's URL.
    pub store_url: Option<String>,
    /// The caller is the administrator: any source but sluice's own.
    pub admin: bool,
}

/// Where a URL reads from, in a form two URLs compare in.
#[derive(Debug, Clone, PartialEq)]
enum Place {
    /// A file or folder (`sqlite:`, `file://`), its path resolved.
    Path { scheme: &'static str, path: PathBuf },
    /// A database server: no password; `database` empty for "any".
    Server {
        scheme: &'static str,
        user: String,
        host: String,
        port: u16,
        database: String,
    },
    /// A warehouse sluice has no connector for: nothing can be read.
    Unreadable,
}

impl Place {
    fn of(url: &str) -> std::result::Result<Place, String> {
        let url = url.trim();
        if warehouse_of(url).is_some() {
            return Ok(Place::Unreadable);
        }
        for (prefix, scheme) in [
            ("sqlite://", "sqlite"),
            ("sqlite:", "sqlite"),
            ("file://", "file"),
        ] {
            if let Some(rest) = url.strip_prefix(prefix) {
                let path = rest.split('?').next().unwrap_or_default();
                if !path.starts_with('/') {
                    return Err(format!("{} must name an absolute path", redact(url)));
                }
                return Ok(Place::Path {
                    scheme,
                    path: resolved(Path::new(path))?,
                });
            }
        }
        let (scheme, port) = match url.split("://").next().unwrap_or_default() {
            "postgres" | "postgresql" => ("postgres", 5432),
            "mysql" | "mariadb" => ("mysql", 3306),
            _ => {
                return Err(format!(
                "{} is not a source sluice reads: use postgres://, mysql://, sqlite:// or file://",
                redact(url)
            ))
            }
        };
        let parsed = url::Url::parse(url).map_err(|e| format!("{}: {e}", redact(url)))?;
        // Connection parameters in the query could point elsewhere than the
        // URL's host (a local socket, another database): not allowed.
        for (key, _) in parsed.query_pairs() {
            let key = key.to_ascii_lowercase();
            if [
                "host", "hostaddr", "port", "dbname", "user", "socket", "service",
            ]
            .contains(&key.as_str())
            {
                return Err(format!(
                    "{}: `{key}` must be part of the URL itself, not of its query",
                    redact(url)
                ));
            }
        }
        let host = match parsed.host_str().unwrap_or_default().to_ascii_lowercase() {
            h if h.is_empty() => {
                return Err(format!("{} names no host", redact(url)));
            }
            h if h == "localhost" || h == "[::1]" || h == "::1" => "127.0.0.1".to_owned(),
            h => h,
        };
        Ok(Place::Server {
            scheme,
            user: parsed.username().to_owned(),
            host,
            port: parsed.port().unwrap_or(port),
            database: parsed.path().trim_matches('/').to_owned(),
        })
    }

    /// Whether `self` is `allowed` or under it.
    fn within(&self, allowed: &Place) -> bool {
        match (self, allowed) {
            (Place::Path { scheme: a, path: p }, Place::Path { scheme: b, path: q }) => {
                a == b && p.starts_with(q)
            }
            (
                Place::Server {
                    scheme,
                    user,
                    host,
                    port,
                    database,
                },
                Place::Server {
                    scheme: s,
                    user: u,
                    host: h,
                    port: p,
                    database: d,
                },
            ) => {
                scheme == s
                    && user == u
                    && host == h
                    && port == p
                    && (d.is_empty() || database == d)
            }
            _ => false,
        }
    }

    /// Whether `self` is sluice's own metadata database (any user).
    fn same_database(&self, store: &Place) -> bool {
        match (self, store) {
            (
                Place::Server {
                    scheme,
                    host,
                    port,
                    database,
                    ..
                },
                Place::Server {
                    scheme: s,
                    host: h,
                    port: p,
                    database: d,
                    ..
                },
            ) => scheme == s && host == h && port == p && database == d,
            (Place::Path { path, .. }, Place::Path { path: p, .. }) => path == p,
            _ => false,
        }
    }
}

/// `path` with links and `..` resolved; a part that does not exist yet is
/// kept as written, but may not climb with `..`.
fn resolved(path: &Path) -> std::result::Result<PathBuf, String> {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while std::fs::symlink_metadata(&existing).is_err() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_owned());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut out = existing
        .canonicalize()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for part in rest.iter().rev() {
        if Path::new(part)
            .components()
            .any(|c| !matches!(c, Component::Normal(_)))
        {
            return Err(format!(
                "{}: `..` in a path that does not exist",
                path.display()
            ));
        }
        out.push(part);
    }
    Ok(out)
}

/// Whether `table` names a system catalog rather than data.
fn system_table(table: &str) -> bool {
    let t = table.trim().trim_matches('"').to_ascii_lowercase();
    let (schema, name) = match t.rsplit_once('.') {
        Some((s, n)) => (s.trim_matches('"'), n.trim_matches('"')),
        None => ("", t.as_str()),
    };
    [
        "pg_catalog",
        "information_schema",
        "mysql",
        "performance_schema",
        "sys",
        "pg_toast",
    ]
    .contains(&schema)
        || name.starts_with("pg_")
        || name.starts_with("sqlite_")
}

impl Control {
    /// The URL a job of `org` reads `table` of `url` with (a declared
    /// source's password filled in), or why it may not.
    pub(crate) async fn allowed_source(
        &self,
        org: &OrganizationId,
        url: &str,
        table: &str,
    ) -> Result<String> {
        let policy = &self.settings.sources;
        let mut place = Place::of(url).map_err(bad)?;
        if place == Place::Unreadable {
            return Ok(url.to_owned());
        }
        // A folder's table is a file in it: the file is what is read.
        if let Place::Path {
            scheme: "file",
            path,
        } = &place
        {
            if Path::new(table)
                .components()
                .any(|c| !matches!(c, Component::Normal(_)))
            {
                return Err(bad(format!(
                    "file `{table}` must be a name inside {}",
                    redact(url)
                )));
            }
            place = Place::Path {
                scheme: "file",
                path: resolved(&path.join(table)).map_err(bad)?,
            };
        }
        self.refuse_own(&place, url)?;
        if system_table(table) {
            return Err(ControlError::Forbidden(format!(
                "{table} is a system catalog, not a source table"
            )));
        }
        if policy.admin {
            return Ok(url.to_owned());
        }
        for grant in self.store.sources_of(org).await? {
            let granted = self
                .sealer
                .open(&grant.url_sealed)
                .map_err(ControlError::Internal)?;
            if Place::of(&granted).is_ok_and(|g| place.within(&g)) {
                return Ok(with_password_of(url, &granted));
            }
        }
        if policy
            .allowed
            .iter()
            .any(|a| Place::of(a).is_ok_and(|a| place.within(&a)))
        {
            return Ok(url.to_owned());
        }
        Err(ControlError::Forbidden(format!(
            "{} is not a source organization {org} may read: an administrator declares \
             sources with `sluice source add --org {org} <name> <url>` (or starts the server \
             with --allow-source)",
            redact(url)
        )))
    }

    /// Refuses sluice's own data: its folders and its metadata database.
    fn refuse_own(&self, place: &Place, url: &str) -> Result<()> {
        let policy = &self.settings.sources;
        let own = match place {
            Place::Path { path, .. } => policy
                .private_dirs
                .iter()
                .any(|dir| resolved(dir).is_ok_and(|d| path.starts_with(d))),
            Place::Server { .. } => policy
                .store_url
                .as_deref()
                .and_then(|u| Place::of(u).ok())
                .is_some_and(|store| place.same_database(&store)),
            Place::Unreadable => false,
        };
        if own {
            return Err(ControlError::Forbidden(format!(
                "{} is sluice's own data: it is never a source",
                redact(url)
            )));
        }
        Ok(())
    }

    /// Declares a source for an organization's jobs (administrator).
    pub async fn add_source(&self, org: &str, name: &str, url: &str) -> Result<SourceGrant> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        self.store.get_organization(&org).await?;
        input::check_name("name", name).map_err(bad)?;
        let place = Place::of(url).map_err(bad)?;
        if place == Place::Unreadable {
            return Err(bad(format!(
                "{}: sluice has no connector for it yet",
                redact(url)
            )));
        }
        self.refuse_own(&place, url)?;
        let grant = SourceGrant {
            organization_id: org.clone(),
            name: name.to_owned(),
            url_sealed: self.sealer.seal(url.trim()),
            url_shown: redact(url.trim()),
            created_at: time::now(),
        };
        self.store.add_source(&grant).await.map_err(|e| match e {
            StoreError::Conflict(_) => ControlError::Conflict(format!(
                "organization {org} has a source named {name} already"
            )),
            e => e.into(),
        })?;
        Ok(grant)
    }

    pub async fn list_sources(&self, org: &str) -> Result<Vec<SourceGrant>> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        self.store.get_organization(&org).await?;
        Ok(self.store.sources_of(&org).await?)
    }

    pub async fn remove_source(&self, org: &str, name: &str) -> Result<()> {
        let org = OrganizationId::parse(org).map_err(|e| bad(e.to_string()))?;
        Ok(self.store.remove_source(&org, name).await?)
    }
}

/// `url`, with the password of `granted` when `url` names none and the
/// same user.
fn with_password_of(url: &str, granted: &str) -> String {
    let (Ok(mut asked), Ok(granted)) = (url::Url::parse(url), url::Url::parse(granted)) else {
        return url.to_owned();
    };
    match (asked.password(), granted.password()) {
        (None, Some(p)) if asked.username() == granted.username() => {
            let p = p.to_owned();
            if asked.set_password(Some(&p)).is_ok() {
                return asked.to_string();
            }
            url.to_owned()
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_compare_after_paths_resolve() {
        let tmp = std::env::temp_dir().join(format!("sluice-places-{}", std::process::id()));
        std::fs::create_dir_all(tmp.join("exports/a")).unwrap();
        std::fs::create_dir_all(tmp.join("data")).unwrap();
        std::os::unix::fs::symlink(tmp.join("data"), tmp.join("exports/link")).unwrap();
        let root = Place::of(&format!("file://{}/exports", tmp.display())).unwrap();
        let inside = Place::of(&format!("file://{}/exports/a", tmp.display())).unwrap();
        let climbing = Place::of(&format!("file://{}/exports/../data", tmp.display())).unwrap();
        let linked = Place::of(&format!("file://{}/exports/link", tmp.display())).unwrap();
        assert!(inside.within(&root));
        assert!(!climbing.within(&root));
        assert!(
            !linked.within(&root),
            "a link out of the folder is not in it"
        );
        assert!(Place::of(&format!("file://{}/exports/new/../../x", tmp.display())).is_err());
        assert!(Place::of("file://relative/path").is_err());
        std::fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn servers_compare_by_host_port_user_and_database() {
        let grant = Place::of("postgres://reader:pw@LocalHost/sales").unwrap();
        assert!(Place::of("postgres://reader@127.0.0.1:5432/sales")
            .unwrap()
            .within(&grant));
        assert!(!Place::of("postgres://reader@127.0.0.1/postgres")
            .unwrap()
            .within(&grant));
        assert!(!Place::of("postgres://postgres@127.0.0.1/sales")
            .unwrap()
            .within(&grant));
        let any_db = Place::of("mysql://reader@db.internal/").unwrap();
        assert!(Place::of("mariadb://reader@db.internal:3306/x")
            .unwrap()
            .within(&any_db));
        assert!(Place::of("postgres://u@h/db?host=/var/run/postgresql").is_err());
        assert!(Place::of("http://example.com/x").is_err());
        let store = Place::of("postgres://sluice@127.0.0.1/meta").unwrap();
        assert!(Place::of("postgres://other@localhost/meta")
            .unwrap()
            .same_database(&store));
    }

    #[test]
    fn system_catalogs_are_not_tables() {
        for t in [
            "pg_authid",
            "pg_catalog.pg_authid",
            "\"pg_catalog\".\"pg_user\"",
            "information_schema.tables",
            "mysql.user",
            "sqlite_master",
        ] {
            assert!(system_table(t), "{t}");
        }
        assert!(!system_table("public.events") && !system_table("events"));
    }

    #[test]
    fn a_declared_password_fills_in_for_the_same_user() {
        assert_eq!(
            with_password_of("postgres://reader@h/db", "postgres://reader:s3cret@h/db"),
            "postgres://reader:s3cret@h/db"
        );
        assert_eq!(
            with_password_of("postgres://other@h/db", "postgres://reader:s3cret@h/db"),
            "postgres://other@h/db"
        );
    }
}
