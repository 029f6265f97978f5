//! A fresh PostgreSQL database per test, dropped afterwards, on the server at `PG_TEST_URL`
//! (default `postgres://postgres@127.0.0.1:5432/postgres`). Without a server, a test that needs
//! one says so in one line and is skipped, unless `CI` is set: then it fails.

use sqlx::Connection;
use sqlx::postgres::PgConnection;

/// The server the test databases are made on (an admin connection to it).
fn admin_url() -> String {
    std::env::var("PG_TEST_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test.
pub(crate) struct TestDatabase {
    name: String,
    /// `postgres://.../<name>`: what DATABASE_URL is set to.
    pub(crate) url: String,
}

impl TestDatabase {
    /// Makes a fresh database, or `None` (with one line on stderr) when no PostgreSQL answers
    /// and `CI` is not set. With `CI` set, no PostgreSQL fails the test.
    pub(crate) async fn create(test: &str) -> Option<Self> {
        let admin = admin_url();
        let mut conn = match PgConnection::connect(&admin).await {
            Ok(conn) => conn,
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("{test}: CI is set, and PostgreSQL at {admin} does not answer: {e}")
            }
            Err(e) => {
                eprintln!("skipped {test}: no PostgreSQL at {admin} ({e})");
                return None;
            }
        };
        let name = format!("sync_async_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let _ = conn.close().await;
        let url = match admin.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("PG_TEST_URL {admin} names no database"),
        };
        Some(Self { name, url })
    }

    /// Runs `sql` against this database from outside the app (to terminate its connections, or
    /// to read what the cluster did), returning the first column of every row as text.
    pub(crate) async fn query_as_admin(&self, sql: &str) -> Vec<Option<String>> {
        Self::query_on(&admin_url(), &sql.replace("$DB", &self.name)).await
    }

    /// Runs `sql` in this database (to read what the cluster stored), returning the first column
    /// of every row as text.
    pub(crate) async fn query(&self, sql: &str) -> Vec<Option<String>> {
        Self::query_on(&self.url, sql).await
    }

    async fn query_on(url: &str, sql: &str) -> Vec<Option<String>> {
        let mut conn = PgConnection::connect(url).await.expect("a connection");
        let rows: Vec<(Option<String>,)> = sqlx::query_as(sqlx::AssertSqlSafe(sql.to_owned()))
            .fetch_all(&mut conn)
            .await
            .expect("the query runs");
        let _ = conn.close().await;
        rows.into_iter().map(|(v,)| v).collect()
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        // Drop runs outside async; the drop gets a thread and a runtime of its own.
        let (admin, name) = (admin_url(), self.name.clone());
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let mut conn = PgConnection::connect(&admin).await.map_err(std::io::Error::other)?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await
                .map_err(std::io::Error::other)?;
                let _ = conn.close().await;
                Ok::<_, std::io::Error>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}
