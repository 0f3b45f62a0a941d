//! Bulk replay as a job (issue 25): a replay of 100,000 dead deliveries through the API, the
//! host SIGKILLed when the job's progress is between 30 and 70 %, restarted: the job resumes
//! from its cursor and finishes, and every delivery was replayed exactly once (each has
//! exactly one more finished attempt). A job created by the CLI with `--detach` while no
//! `serve` runs waits for one; one cancelled before any `serve` works it never runs; `replay
//! status|list|cancel` and the API's job routes show and stop them.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use testkit::{Host, Target, default_timeout, scaled, target_count};

/// Dead deliveries in the crash test.
const BULK: usize = 100_000;
/// Events per `POST /v1/events`.
const POST_CHUNK: usize = 1_000;

/// `n` `bulk.created` events, in batches of [`POST_CHUNK`].
async fn enqueue(host: &Host, n: usize) {
    for chunk in 0..n.div_ceil(POST_CHUNK) {
        let batch: Vec<Value> = (0..POST_CHUNK.min(n - chunk * POST_CHUNK))
            .map(|i| json!({"type": "bulk.created", "payload": {"n": chunk * POST_CHUNK + i}}))
            .collect();
        host.enqueue_batch(batch).await;
    }
}

/// How many deliveries of `target` do not have exactly `n` finished attempts (an attempt a
/// crash abandoned does not count: it never reached the plugin's end, and was made again).
fn not_attempted(host: &Host, target: &str, n: i64) -> i64 {
    host.sql_i64(&format!(
        "SELECT count(*) FROM (
           SELECT d.id FROM deliveries d
           LEFT JOIN attempts a ON a.delivery_id = d.id AND a.outcome <> 'abandoned'
           WHERE d.target = '{target}'
           GROUP BY d.id HAVING count(a.delivery_id) <> {n}
         ) wrong"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_job_of_100k_dead_deliveries_survives_a_sigkill_and_replays_each_once() {
    let mut host = Host::new();
    // Every attempt fails for good: each delivery is dead after one attempt, and again after
    // each replay, so a delivery replayed twice would show a third attempt.
    host.add_target(
        "bulk",
        // A fixed limit: the adaptive one would shrink under the permanent failures, and the
        // test is about the job, not about pacing a failing receiver.
        &Target::misbehave("permanent")
            .events(&["bulk.*"])
            .concurrency(64)
            .concurrency_mode("fixed"),
    );
    host.start().await;
    let started = Instant::now();
    enqueue(&host, BULK).await;
    let long = scaled(Duration::from_secs(600));
    host.wait_for_targets(long, |ts| target_count(ts, "bulk", "dead") == BULK as u64)
        .await;
    eprintln!("{BULK} deliveries dead after {:?}", started.elapsed());
    assert_eq!(not_attempted(&host, "bulk", 1), 0, "one attempt each before the replay");

    let replay_started = Instant::now();
    let (status, job) = host
        .post_json("/v1/deliveries/replay", &json!({"target": "bulk"}))
        .await;
    assert_eq!(status, 202, "{job}");
    assert_eq!(
        (&job["status"], &job["total"], &job["replayed"]),
        (&json!("running"), &json!(BULK), &json!(0)),
        "{job}"
    );
    let id = job["id"].as_i64().unwrap();
    let path = format!("/v1/replays/{id}");

    // Watch its progress; kill the host halfway.
    let mut seen = Vec::new();
    let at_kill = loop {
        let (status, job) = host.get_json(&path).await;
        assert_eq!(status, 200, "{job}");
        let progress = job["progress"].as_f64().unwrap();
        seen.push(progress);
        if (0.3..=0.7).contains(&progress) {
            break job;
        }
        assert!(
            progress < 0.3 && job["status"] == "running",
            "the job went past 70 % between two looks (seen {seen:?}): {job}"
        );
        assert!(replay_started.elapsed() < long, "no progress: {job}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    host.kill_9().await;
    eprintln!(
        "killed at {:.0} % ({} replayed) after {:?}; progress seen {seen:?}",
        at_kill["progress"].as_f64().unwrap() * 100.0,
        at_kill["replayed"],
        replay_started.elapsed()
    );
    let kept = host.sql_i64(&format!("SELECT replayed FROM replay_jobs WHERE id = {id}"));
    let cursor = host.sql_i64(&format!("SELECT cursor_id FROM replay_jobs WHERE id = {id}"));
    assert!(
        kept >= at_kill["replayed"].as_i64().unwrap() && kept < BULK as i64,
        "the job stopped halfway with what it had committed: {kept} replayed"
    );
    assert_eq!(
        host.sql_i64(&format!(
            "SELECT count(*) FROM deliveries WHERE target = 'bulk' AND id <= {cursor}"
        )),
        kept,
        "the job counted every delivery up to its cursor"
    );
    assert_eq!(
        host.sql_i64(&format!(
            "SELECT count(*) FROM deliveries d WHERE d.target = 'bulk' AND d.id <= {cursor} AND d.status = 'dead' \
             AND (SELECT count(*) FROM attempts a WHERE a.delivery_id = d.id AND a.outcome <> 'abandoned') = 1"
        )),
        0,
        "every delivery up to the cursor was replayed (pending or in flight again, or dead again after one \
         more attempt)"
    );
    assert_eq!(
        host.sql_i64(&format!(
            "SELECT count(*) FROM deliveries WHERE target = 'bulk' AND id > {cursor} AND status <> 'dead'"
        )),
        0,
        "nothing after the cursor was replayed"
    );

    // Restarted, the host resumes the job from its cursor.
    host.start().await;
    let job = host.wait_for_replay(id, long).await;
    eprintln!("the job finished {:?} after it started", replay_started.elapsed());
    assert_eq!(
        (
            &job["status"],
            &job["total"],
            &job["replayed"],
            &job["skipped"],
            &job["progress"]
        ),
        (&json!("done"), &json!(BULK), &json!(BULK), &json!(0), &json!(1.0)),
        "{job}"
    );
    assert!(job["finished_at"].is_string(), "{job}");
    let targets = host
        .wait_for_targets(long, |ts| target_count(ts, "bulk", "dead") == BULK as u64)
        .await;
    assert_eq!(target_count(&targets, "bulk", "pending"), 0, "{targets:#}");
    assert_eq!(target_count(&targets, "bulk", "in_flight"), 0, "{targets:#}");
    eprintln!("replayed and dead again after {:?}", replay_started.elapsed());

    // Each delivery was replayed exactly once: one more finished attempt each, never two.
    assert_eq!(
        not_attempted(&host, "bulk", 2),
        0,
        "every delivery has exactly two finished attempts: the first and the one replay"
    );
    let (_, metrics) = host.get_json("/metrics").await;
    let metrics = metrics.as_str().unwrap_or_default().to_owned();
    let line = format!(
        r#"outboxd_replay_job_deliveries_total{{result="replayed"}} {}"#,
        BULK as i64 - kept
    );
    assert!(
        metrics.contains(&line),
        "the restarted host counts what it replayed ({line}):\n{}",
        metrics
            .lines()
            .filter(|l| l.contains("replay_job"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The job id in `outboxd dead replay --detach`'s answer.
fn job_id(stdout: &str) -> i64 {
    stdout
        .strip_prefix("replay job ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no job id in {stdout:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_replay_waits_for_serve_and_a_cancelled_one_never_runs() {
    let mut host = Host::new();
    host.add_target("bad", &Target::misbehave("permanent").events(&["bulk.*"]));
    host.start().await;
    enqueue(&host, 30).await;
    host.wait_for_targets(default_timeout(), |ts| target_count(ts, "bad", "dead") == 30)
        .await;
    host.stop().await;

    // No `serve` runs: the job is created and waits.
    let out = host.run_cli(&["dead", "replay", "--target", "bad", "--detach"]).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout.contains("started: 30 deliveries match") && out.stdout.contains("`outboxd serve` works it"),
        "{out}"
    );
    let waiting = job_id(&out.stdout);
    let out = host.run_cli(&["replay", "status", &waiting.to_string()]).await;
    assert!(out.status.success(), "{out}");
    assert!(
        out.stdout.contains("status         running") && out.stdout.contains("replayed 0/30"),
        "{out}"
    );
    // A second one, capped, is cancelled before anything works it.
    let out = host
        .run_cli(&["dead", "replay", "--target", "bad", "--limit", "5", "--detach"])
        .await;
    assert!(
        out.status.success() && out.stdout.contains("5 deliveries match"),
        "{out}"
    );
    let cancelled = job_id(&out.stdout);
    let out = host.run_cli(&["replay", "cancel", &cancelled.to_string()]).await;
    assert!(
        out.status.success() && out.stdout.contains("status         cancelled"),
        "{out}"
    );
    let out = host.run_cli(&["replay", "cancel", "999"]).await;
    assert!(
        !out.status.success() && out.stderr.contains("no replay job 999"),
        "{out}"
    );
    let out = host.run_cli(&["dead", "replay", "--limit", "0", "--detach"]).await;
    assert!(!out.status.success(), "a zero cap is refused: {out}");
    assert_eq!(host.count_rows("replay_jobs"), 2, "the refused one created nothing");

    // `serve` starts and works the waiting job; the cancelled one stays as it was.
    host.start().await;
    let done = host.wait_for_replay(waiting, default_timeout()).await;
    assert_eq!(
        (&done["status"], &done["replayed"], &done["total"]),
        (&json!("done"), &json!(30), &json!(30)),
        "{done}"
    );
    host.wait_for_targets(default_timeout(), |ts| {
        target_count(ts, "bad", "dead") == 30 && target_count(ts, "bad", "pending") == 0
    })
    .await;
    let (status, job) = host.get_json(&format!("/v1/replays/{cancelled}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&job["status"], &job["replayed"], &job["limit"]),
        (&json!("cancelled"), &json!(0), &json!(5)),
        "{job}"
    );
    assert!(job["finished_at"].is_string(), "{job}");
    assert_eq!(
        not_attempted(&host, "bad", 2),
        0,
        "30 replayed once each, by the one job that ran"
    );

    let out = host.run_cli(&["replay", "status", &waiting.to_string()]).await;
    assert!(
        out.stdout
            .contains(&format!("replay job {waiting} done: replayed 30 of 30 deliveries")),
        "the summary: {out}"
    );
    let out = host.run_cli(&["replay", "list"]).await;
    assert!(out.status.success(), "{out}");
    let rows: Vec<&str> = out.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(
        rows[0].trim_start().starts_with(&cancelled.to_string()) && rows[0].contains("cancelled"),
        "newest first: {out}"
    );
    assert!(rows[1].contains("done") && rows[1].contains("target=bad"), "{out}");

    // The API: the list, a cancellation of a finished job (unchanged), unknown and invalid ids.
    let (status, list) = host.get_json("/v1/replays").await;
    assert_eq!(status, 200);
    let ids: Vec<i64> = list["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|j| j["id"].as_i64())
        .collect();
    assert_eq!(ids, [cancelled, waiting], "{list}");
    let (status, job) = host
        .post_json(&format!("/v1/replays/{waiting}/cancel"), &json!(null))
        .await;
    assert_eq!((status, &job["status"]), (200, &json!("done")), "{job}");
    let (status, body) = host.post_json("/v1/replays/999/cancel", &json!(null)).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = host.get_json("/v1/replays/abc").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = host.get_json("/v1/replays?limit=0").await;
    assert_eq!(status, 400, "{body}");
}
