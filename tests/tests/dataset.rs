//! `custodian bench dataset` on a tiny dataset: it loads through the real ingest path, its read models
//! hold every reading it planned (missing minutes excepted, duplicates recognised), it reports the disk
//! each store takes, and a second run over the same data dir resumes and has nothing left to send.

use custodian_tests::*;

fn run(dir: &std::path::Path, db: &str) -> String {
    let out = custodian_ok(
        &[
            "bench",
            "dataset",
            "--enterprises",
            "3",
            "--terminals",
            "6",
            "--days",
            "1",
            "--readings",
            "1200",
            "--seed",
            "7",
            "--database",
            db,
            "--data-dir",
            dir.to_str().expect("a UTF-8 temporary directory"),
        ],
        &[("RUST_LOG", "warn")],
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_dataset_loads_resumes_and_reports_its_disk() {
    let dir = tempfile::tempdir().unwrap();
    let models = ReadModels::new("ds");
    let first = run(&dir.path().join("ds"), &models.name);
    assert!(first.contains("disk: event log"), "{first}");
    let missing: i64 = first
        .split(" missing by design")
        .next()
        .and_then(|s| s.rsplit('(').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{first}"));
    let pool = models.pool().await;
    let stored: i64 = sqlx::query_scalar("SELECT sum(readings)::int8 FROM custodian_g1.terminals")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 1200 - missing, "{first}");
    let provinces: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT province_code) FROM custodian_g1.enterprises")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(provinces, 3);
    // A marker the second run must leave alone: resuming reuses the read models, never drops them.
    sqlx::query("CREATE TABLE public.resume_marker (x int)")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let second = run(&dir.path().join("ds"), &models.name);
    assert!(second.contains(", 0 sent this run"), "{second}");
    let pool = models.pool().await;
    let kept: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename = 'resume_marker'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        kept, 1,
        "the second run dropped the read models it should resume"
    );
    pool.close().await;
    models.drop_all().await;
}
