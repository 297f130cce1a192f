//! The PostgreSQL server the token tests use (`GATEHOUSE_TEST_POSTGRES_URL`) takes a real
//! login and lets the tests make a schema of their own. scripts/test.sh runs this first, on
//! machines without `psql`, to decide whether the PostgreSQL tests run or are SKIPPED; in the
//! whole suite it names the problem in one line instead of a panic in every token test.

use std::time::Duration;

use sqlx::Connection as _;

const PG_ENV: &str = "GATEHOUSE_TEST_POSTGRES_URL";

#[tokio::test]
async fn the_test_postgres_server_takes_a_login_and_a_schema() {
    let url = match std::env::var(PG_ENV) {
        Ok(u) if !u.trim().is_empty() => u,
        _ => {
            use std::io::Write as _;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED the_test_postgres_server_takes_a_login_and_a_schema: {PG_ENV} not set"
            );
            return;
        }
    };
    let mut conn = tokio::time::timeout(Duration::from_secs(10), sqlx::PgConnection::connect(&url))
        .await
        .unwrap_or_else(|_| panic!("{PG_ENV}: no answer from PostgreSQL within 10s"))
        .unwrap_or_else(|e| panic!("{PG_ENV}: cannot log in to PostgreSQL: {e}"));
    // What every PostgreSQL token test does first: a schema of its own.
    let mut tx = sqlx::Connection::begin(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{PG_ENV}: cannot begin a transaction: {e}"));
    sqlx::raw_sql("CREATE SCHEMA gatehouse_login_probe")
        .execute(&mut *tx)
        .await
        .unwrap_or_else(|e| panic!("{PG_ENV}: the login cannot create a schema: {e}"));
    tx.rollback().await.expect("rollback");
    let one: i32 = sqlx::query_scalar("SELECT 1")
        .fetch_one(&mut conn)
        .await
        .expect("SELECT 1");
    assert_eq!(one, 1);
    let _ = conn.close().await;
}
