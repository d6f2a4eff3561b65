//! Shared by the benchmarks that drive the real server in process: start
//! it on 127.0.0.1:0 with a temporary storage directory, and stop it.

use eddy::app::App;
use eddy::config::Config;
use tokio_util::sync::CancellationToken;

pub struct Server {
    pub base: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

/// Starts `config` on a free loopback port and a fresh storage directory.
pub async fn start(mut config: Config) -> Server {
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.admin.listen = "127.0.0.1:0".parse().expect("addr");
    let dir = tempfile::tempdir().expect("dir");
    config.storage.dir = dir.path().to_owned();
    let app = App::build(config).await.expect("app");
    let base = format!("http://{}", app.local_addr().expect("addr"));
    let stop = app.shutdown_token();
    let task = tokio::spawn(app.run());
    Server {
        base,
        stop,
        task,
        _dir: dir,
    }
}

/// POSTs `body` as JSON and returns the JSON answer.
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    client
        .post(url)
        .json(body)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json answer")
}

impl Server {
    /// Graceful stop; panics if the server did not stop cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("join").expect("clean stop");
    }
}
