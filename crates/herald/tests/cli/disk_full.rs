//! A full disk under durable storage (the SQLite file, or a PostgreSQL
//! tablespace): publications to a durable channel fail with an error and
//! none is acknowledged without being stored; delivery on channels without
//! durable history goes on; once space is freed publishing resumes without
//! a restart, at the next offset, and the history holds exactly what was
//! acknowledged.
//!
//! Needs a small filesystem of its own (tmpfs, mounted by the test): as
//! root, or it is skipped — unless `HERALD_TEST_REQUIRE_SERVICES` is set,
//! as on CI, where a skip fails.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use herald_testkit::TestDatabase;

use super::*;

const CHANNEL: &str = "dur:full";
/// The size of the filesystem; the filler leaves about `ROOM` of it: more
/// than SQLite's write-ahead log holds before it is checkpointed (1,000
/// pages), so that checkpoints into a filling file are part of it.
const SIZE: u64 = 24 << 20;
const ROOM: u64 = 6 << 20;
const PAYLOAD: usize = 16 << 10;

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts one at `at`, or says why the test is skipped (`None`).
    fn mount_or_skip(at: &Path) -> Option<Self> {
        let mounted = Self::mount(at, SIZE);
        if mounted.is_none() {
            skip("cannot mount a tmpfs (needs root with CAP_SYS_ADMIN)");
        }
        mounted
    }

    fn mount(at: &Path, bytes: u64) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let status = Process::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}")])
            .arg("tmpfs")
            .arg(at)
            .status();
        match status {
            Ok(s) if s.success() => Some(Self(at.to_path_buf())),
            _ => None,
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Process::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Says why the test does not run, which fails it where services are
/// required.
fn skip(why: &str) {
    assert!(
        std::env::var_os("HERALD_TEST_REQUIRE_SERVICES").is_none(),
        "{why}, and HERALD_TEST_REQUIRE_SERVICES is set"
    );
    eprintln!("skipped: {why}");
}

async fn api(addr: &str, method: &str, body: Value) -> Value {
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/api/{method}"))
        .timeout(Duration::from_secs(20))
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method}: no answer: {e}"));
    resp.json::<Value>().await.unwrap()
}

/// A publication of about [`PAYLOAD`] bytes that does not compress (so
/// that PostgreSQL's TOAST cannot shrink it).
async fn publish(addr: &str, tag: &str) -> Value {
    let mut x = tag.bytes().fold(0x9e37_79b9_7f4a_7c15u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let pad: String = (0..PAYLOAD / 16)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}")
        })
        .collect();
    let data = json!({"tag": tag, "pad": pad});
    api(addr, "publish", json!({"channel": CHANNEL, "data": data})).await
}

/// Fills `dir`'s filesystem but for about `room` bytes; returns the
/// filler's path.
fn fill(dir: &Path, room: u64) -> PathBuf {
    let filler = dir.join("filler");
    let free = fs_free(dir);
    let size = free.saturating_sub(room);
    let chunk = vec![1u8; 1 << 20];
    let mut file = std::fs::File::create(&filler).unwrap();
    let mut written = 0;
    while written < size {
        let n = chunk.len().min((size - written) as usize);
        std::io::Write::write_all(&mut file, &chunk[..n]).unwrap();
        written += n as u64;
    }
    filler
}

/// Free bytes on `dir`'s filesystem, from `df`.
fn fs_free(dir: &Path) -> u64 {
    let out = run(Process::new("df").args(["-B1", "--output=avail"]).arg(dir));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines().nth(1).unwrap().trim().parse().unwrap()
}

/// Runs the scenario against a server whose durable storage is `storage`
/// (its files on the filesystem at `fs`), started with `args`.
async fn fill_and_free(storage: Value, fs: &Path, args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    write(
        &config,
        &json!({
            "http_api": {"insecure": true},
            "client": {"insecure": true},
            "storage": storage,
            "channel": {"namespaces": [
                {"name": "dur", "history_storage": "durable"},
                {"name": "live"}
            ]}
        }),
    );
    let served = serve_with_args(&config, args);
    let addr = served.addr.clone();
    let mut live = Ws::connect(&addr).await;
    live.cmd(json!({"connect": {}})).await;
    live.cmd(json!({"subscribe": {"channel": "live:news"}}))
        .await;

    let r = publish(&addr, "before").await;
    assert_eq!(r["result"]["offset"], 1, "{r}");
    let filler = fill(fs, ROOM);

    // Publish until the disk refuses; every acknowledged one is kept.
    let mut acked = vec![(1u64, "before".to_string())];
    let mut failed = 0;
    for n in 0..2_000 {
        let tag = format!("p{n}");
        let r = publish(&addr, &tag).await;
        if let Some(offset) = r["result"]["offset"].as_u64() {
            acked.push((offset, tag));
            continue;
        }
        assert_eq!(r["error"]["code"], 100, "an internal error: {r}");
        failed += 1;
        if failed == 5 {
            break;
        }
    }
    assert_eq!(failed, 5, "the disk never filled");
    // The log says why.
    let why = log_lines(&served, "publish failed", Duration::from_millis(300));
    assert!(
        why.iter()
            .any(|l| l.contains("disk is full") || l.contains("No space left on device")),
        "the cause is logged: {why:?}"
    );

    // Channels without durable history still deliver.
    let r = api(
        &addr,
        "publish",
        json!({"channel": "live:news", "data": {"still": "live"}}),
    )
    .await;
    assert!(r["error"].is_null(), "{r}");
    let push = live.push().await;
    assert_eq!(push["pub"]["data"], json!({"still": "live"}), "{push}");

    // Space comes back: publishing resumes, no restart, next offset.
    std::fs::remove_file(&filler).unwrap();
    let top = acked.last().unwrap().0;
    let deadline = Instant::now() + Duration::from_secs(5);
    let resumed = loop {
        let r = publish(&addr, "after").await;
        if let Some(offset) = r["result"]["offset"].as_u64() {
            break offset;
        }
        assert!(Instant::now() < deadline, "still failing 5 s later: {r}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(resumed, top + 1, "offsets go on where they stopped");
    acked.push((resumed, "after".to_string()));

    let history = api(&addr, "history", json!({"channel": CHANNEL, "limit": -1})).await;
    let pubs = history["result"]["publications"].as_array().unwrap();
    let kept: Vec<(u64, String)> = pubs
        .iter()
        .map(|p| {
            let offset = p["offset"].as_u64().unwrap();
            (offset, p["data"]["tag"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(kept, acked, "exactly the acknowledged publications");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_sqlite_fails_publishes_until_space_is_freed() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let Some(_mounted) = Tmpfs::mount_or_skip(&data) else {
        return;
    };
    let args = ["--data-dir", data.to_str().unwrap()];
    fill_and_free(json!({"type": "sqlite"}), &data, &args).await;

    let url = format!("sqlite://{}", data.join("streams.db").display());
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url)
        .await
        .unwrap();
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(check, "ok");
}

/// A tablespace holding a test database: dropped with it (the database
/// first), before the filesystem under it is unmounted.
struct Tablespace {
    admin: String,
    name: String,
    db: Option<TestDatabase>,
}

impl Drop for Tablespace {
    fn drop(&mut self) {
        drop(self.db.take());
        let sql = format!("DROP TABLESPACE IF EXISTS {}", self.name);
        let _ = Process::new("psql")
            .args([self.admin.as_str(), "-qc", &sql])
            .status();
    }
}

/// The database's tables in a tablespace on the tmpfs (PostgreSQL's own
/// write-ahead log stays on its disk). Needs the PostgreSQL server on this
/// machine, running as `postgres`, and a superuser in
/// `HERALD_TEST_POSTGRES_URL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_postgres_fails_publishes_until_space_is_freed() {
    let Some(db) = TestDatabase::create() else {
        return;
    };
    let admin = std::env::var("HERALD_TEST_POSTGRES_URL").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let space = dir.path().join("space");
    let Some(_mounted) = Tmpfs::mount_or_skip(&space) else {
        return;
    };
    // The server's own user must reach and own the tablespace's directory.
    let reach = run(Process::new("chmod").arg("755").arg(dir.path()));
    let own = run(Process::new("chown").arg("postgres:postgres").arg(&space));
    if !reach.status.success() || !own.status.success() {
        return skip("cannot give the tablespace's directory to the user postgres");
    }
    let tablespace = Tablespace {
        admin: admin.clone(),
        name: format!("{}_space", db.name),
        db: Some(db),
    };
    let psql = |sql: String| run(Process::new("psql").args([admin.as_str(), "-qc", &sql]));
    let created = psql(format!(
        "CREATE TABLESPACE {} LOCATION '{}'",
        tablespace.name,
        space.display()
    ));
    if !created.status.success() {
        return skip(&format!(
            "PostgreSQL cannot make a tablespace here (not on this machine, or not a superuser): {}",
            stderr(&created)
        ));
    }
    let db = tablespace.db.as_ref().expect("the database");
    let set = psql(format!(
        "ALTER DATABASE {} SET default_tablespace = {}",
        db.name, tablespace.name
    ));
    assert!(set.status.success(), "{}", stderr(&set));
    let storage = json!({"type": "postgres", "postgres": {"url": db.url}});
    fill_and_free(storage, &space, &[]).await;
}
