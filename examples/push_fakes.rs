//! The fake APNs and FCM servers of tests/fakes as a process, for tests/ops/run.sh: a
//! real Herald binary pushes to them while Prometheus scrapes its push metrics.
//!
//! ```text
//! push_fakes DIR
//! ```
//!
//! Writes the CAs, the APNs key and the FCM service account into DIR, prints the
//! `HERALD_PUSH__*` environment that points Herald at the fakes (`KEY=VALUE` lines, then
//! `ready`), and serves until SIGTERM or SIGINT; then prints how many requests each
//! answered and how many broke the providers' documented rules. Tokens answer 200 except these, whose failures the
//! ops dashboards must show (tests/ops/load.py registers them):
//!
//! | token | APNs / FCM answer | Herald then |
//! |---|---|---|
//! | [`APNS_DEAD`], [`FCM_DEAD`] | 410 Unregistered / 404 UNREGISTERED | removes the device |
//! | [`APNS_BUSY`], [`FCM_BUSY`] | 503 ServiceUnavailable / 503 UNAVAILABLE | retries, then gives up |

#[path = "../tests/fakes/mod.rs"]
mod fakes;

use fakes::apns::FakeApns;
use fakes::fcm::FakeFcm;
use fakes::Reply;

const APNS_DEAD: &str = "dead000000000000000000000000000000000000000000000000000000000000";
const APNS_BUSY: &str = "b0b0000000000000000000000000000000000000000000000000000000000000";
const FCM_DEAD: &str = "ops-fcm-dead";
const FCM_BUSY: &str = "ops-fcm-busy";
/// Scripts are queues of answers; this many outlasts any ops run.
const REPEAT: usize = 100_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .ok_or_else(|| anyhow::anyhow!("usage: push_fakes DIR"))?;
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(dir.join("apns"))?;
    std::fs::create_dir_all(dir.join("fcm"))?;
    let apns = FakeApns::start(&dir.join("apns")).await;
    let fcm = FakeFcm::start(&dir.join("fcm")).await;
    let (dead, busy) = (
        vec![Reply::Unregistered; REPEAT],
        vec![Reply::Unavailable; REPEAT],
    );
    apns.log.script(APNS_DEAD, &dead);
    apns.log.script(APNS_BUSY, &busy);
    fcm.log.script(FCM_DEAD, &dead);
    fcm.log.script(FCM_BUSY, &busy);
    for (k, v) in apns.env().into_iter().chain(fcm.env()) {
        println!("{k}={v}");
    }
    println!("ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    let violations: Vec<String> = apns
        .log
        .violations()
        .into_iter()
        .chain(fcm.log.violations())
        .collect();
    eprintln!(
        "push_fakes: APNs answered {}, FCM {}; {} violations",
        apns.log.count(),
        fcm.log.count(),
        violations.len()
    );
    Ok(())
}
