//! Databases made for one test on the local servers and dropped when the
//! test ends, passed or failed: a [`TempDb`] derefs to its URL.
//!
//! PostgreSQL from `SLUICE_TEST_POSTGRES_URL` (default
//! postgres://postgres@127.0.0.1:5432/postgres), MariaDB/MySQL from
//! `SLUICE_TEST_MYSQL_URL` (default mysql://root@127.0.0.1:3306). A test
//! whose server does not answer fails loudly, naming it.

use sqlx::Connection;

/// Runs `sql` (one statement or several) on the PostgreSQL database at
/// `url`; panics on an error.
pub async fn pg_exec(url: &str, sql: &str) {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::raw_sql(sql).execute(&mut c).await.unwrap();
}

/// The one text value `sql` answers on the PostgreSQL database at `url`
/// (None for NULL); panics on an error.
pub async fn pg_scalar(url: &str, sql: &str) -> Option<String> {
    let mut c = sqlx::PgConnection::connect(url).await.unwrap();
    sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap()
}

/// The PostgreSQL server tests use (a URL of one of its databases).
pub fn postgres_admin() -> String {
    std::env::var("SLUICE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The MariaDB/MySQL server tests use (a URL without a database).
pub fn mysql_admin() -> String {
    std::env::var("SLUICE_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A database that exists for as long as this value.
#[derive(Debug)]
pub struct TempDb {
    url: String,
    name: String,
    postgres: bool,
}

impl TempDb {
    /// A new PostgreSQL database named `<prefix>_<random>`.
    pub async fn postgres(prefix: &str) -> TempDb {
        let admin = postgres_admin();
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL must answer at {admin}: {e}"));
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        TempDb {
            url: format!("{base}/{name}"),
            name,
            postgres: true,
        }
    }

    /// A new MariaDB/MySQL database named `<prefix>_<random>`.
    pub async fn mysql(prefix: &str) -> TempDb {
        let admin = mysql_admin();
        let mut conn = sqlx::MySqlConnection::connect(&format!("{admin}/mysql"))
            .await
            .unwrap_or_else(|e| panic!("MariaDB must answer at {admin}: {e}"));
        let name = format!("{prefix}_{:016x}", rand::random::<u64>());
        sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        TempDb {
            url: format!("{admin}/{name}"),
            name,
            postgres: false,
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl std::ops::Deref for TempDb {
    type Target = str;
    fn deref(&self) -> &str {
        &self.url
    }
}

impl std::fmt::Display for TempDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        // On a thread of its own with its own runtime: a drop may come on
        // a runtime's thread, or while a failed test unwinds.
        let (name, postgres) = (self.name.clone(), self.postgres);
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                if postgres {
                    let mut c = sqlx::PgConnection::connect(&postgres_admin()).await.ok()?;
                    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await
                        .ok()
                        .map(|_| ())
                } else {
                    let mut c = sqlx::MySqlConnection::connect(&format!("{}/mysql", mysql_admin()))
                        .await
                        .ok()?;
                    sqlx::raw_sql(&format!("DROP DATABASE IF EXISTS {name}"))
                        .execute(&mut c)
                        .await
                        .ok()
                        .map(|_| ())
                }
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(_))) {
            eprintln!("could not drop the test database {}", self.name);
        }
    }
}
