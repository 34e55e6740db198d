//! Prometheus metrics of the rendezvous (`GET /metrics`, text format): rooms and peers, the
//! relay, refused requests by reason, WHEP sessions and browsers, the certificate's expiry.
//!
//! The UDP server publishes its rooms' figures here about once a second; the web side counts
//! its own refusals; the bridge is asked at scrape time. Encoding goes through
//! `prometheus-client`, so names, types and escaping follow the exposition format.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::bridge::core::BridgeTotals;
use crate::server::rooms::RoomsSnapshot;

/// Shared by the UDP server, the web side and the scrape handler.
#[derive(Debug, Default)]
pub struct Metrics {
    rooms: Mutex<RoomsSnapshot>,
    malformed: Mutex<u64>,
    http_refused: Mutex<BTreeMap<&'static str, u64>>,
    cert_expiry: Mutex<Option<SystemTime>>,
}

impl Metrics {
    pub fn publish_rooms(&self, snap: RoomsSnapshot, malformed: u64) {
        if let Ok(mut r) = self.rooms.lock() {
            *r = snap;
        }
        if let Ok(mut m) = self.malformed.lock() {
            *m = malformed;
        }
    }

    /// An HTTP request refused with this reason (the `error` of its JSON body).
    pub fn refused_http(&self, reason: &'static str) {
        if let Ok(mut m) = self.http_refused.lock() {
            *m.entry(reason).or_default() += 1;
        }
    }

    /// The served certificate expires then (PEM, self-signed or ACME).
    pub fn set_cert_expiry(&self, at: Option<SystemTime>) {
        if let Ok(mut c) = self.cert_expiry.lock() {
            *c = at;
        }
    }

    pub fn cert_expiry(&self) -> Option<SystemTime> {
        self.cert_expiry.lock().ok().and_then(|c| *c)
    }

    /// The text exposition of everything, with the bridge's totals read just before.
    pub fn encode(&self, bridge: Option<BridgeTotals>) -> String {
        let sample = Sample {
            rooms: self.rooms.lock().map(|r| r.clone()).unwrap_or_default(),
            malformed: self.malformed.lock().map(|m| *m).unwrap_or(0),
            http_refused: self
                .http_refused
                .lock()
                .map(|m| m.clone())
                .unwrap_or_default(),
            cert_expiry: self.cert_expiry(),
            bridge,
        };
        let mut registry = Registry::with_prefix("inclubit");
        registry.register_collector(Box::new(sample));
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// One scrape's figures.
#[derive(Debug)]
struct Sample {
    rooms: RoomsSnapshot,
    malformed: u64,
    http_refused: BTreeMap<&'static str, u64>,
    cert_expiry: Option<SystemTime>,
    bridge: Option<BridgeTotals>,
}

fn gauge(e: &mut DescriptorEncoder, name: &str, help: &str, v: i64) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

/// One counter family with a label `key`, one series per value.
fn counters_by(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    key: &'static str,
    series: &[(&str, u64)],
) -> std::fmt::Result {
    let mut family =
        e.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
    for (value, n) in series {
        let labels = [(key, *value)];
        ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Sample {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let r = &self.rooms;
        gauge(
            &mut e,
            "rooms",
            "Open rooms (one sender each).",
            r.rooms as i64,
        )?;
        let mut peers = e.encode_descriptor(
            "peers",
            "Peers in rooms, by role.",
            None,
            ConstGauge::new(0i64).metric_type(),
        )?;
        for (role, n) in [("sender", r.rooms), ("viewer", r.viewers)] {
            ConstGauge::new(n as i64).encode(peers.encode_family(&[("role", role)])?)?;
        }
        gauge(
            &mut e,
            "relay_sessions",
            "Relay sessions (a viewer and its sender).",
            r.relay_sessions as i64,
        )?;
        counter(
            &mut e,
            "relay_packets",
            "Datagrams relayed.",
            r.relay.packets,
        )?;
        counter(&mut e, "relay_bytes", "Bytes relayed.", r.relay.bytes)?;
        counters_by(
            &mut e,
            "relay_dropped_packets",
            "Relay datagrams dropped, by reason.",
            "reason",
            &[
                ("not_member", r.relay.refused),
                ("rate_limited", r.relay.limited),
            ],
        )?;
        counter(
            &mut e,
            "malformed_datagrams",
            "Datagrams that were not a valid message.",
            self.malformed,
        )?;
        let refused: Vec<(&str, u64)> = r.refused.iter().map(|(k, v)| (*k, *v)).collect();
        counters_by(
            &mut e,
            "refused_requests",
            "Rendezvous requests answered with an error, by reason.",
            "reason",
            &refused,
        )?;
        let http: Vec<(&str, u64)> = self.http_refused.iter().map(|(k, v)| (*k, *v)).collect();
        counters_by(
            &mut e,
            "http_refused_requests",
            "HTTP requests (WHEP, pages) refused, by reason.",
            "reason",
            &http,
        )?;
        if let Some(b) = self.bridge {
            gauge(
                &mut e,
                "whep_sessions",
                "Browser sessions (WHEP offers answered, connected or not).",
                b.browsers as i64,
            )?;
            gauge(
                &mut e,
                "bridge_viewers",
                "Browsers connected and watching.",
                b.connected as i64,
            )?;
            gauge(
                &mut e,
                "bridge_bitrate_bits_per_second",
                "Video sent to browsers, all rooms, over the last second.",
                b.bitrate as i64,
            )?;
            counter(
                &mut e,
                "bridge_media_bytes",
                "Video bytes sent to browsers.",
                b.media_bytes,
            )?;
        }
        if let Some(at) = self.cert_expiry {
            let secs = at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            gauge(
                &mut e,
                "certificate_expiry_timestamp_seconds",
                "When the HTTPS certificate expires (Unix time).",
                secs,
            )?;
        }
        Ok(())
    }
}

/// The sender's figures for `send --metrics`.
#[derive(Debug, Clone, Default)]
pub struct SenderSample {
    pub fps: f64,
    pub bitrate_bps: f64,
    pub frames: u64,
    pub viewers: Vec<ViewerSample>,
}

#[derive(Debug, Clone, Default)]
pub struct ViewerSample {
    pub id: usize,
    /// direct, upnp or relay.
    pub path: String,
    pub rendition: String,
    pub rtt_seconds: f64,
    pub estimate_bps: f64,
    pub target_bps: f64,
    pub sent_bps: f64,
    pub frames_sent: u64,
    pub frames_skipped: u64,
    pub idrs: u64,
}

impl Collector for SenderSample {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let f = |e: &mut DescriptorEncoder, name: &str, help: &str, v: f64| {
            let g = ConstGauge::new(v);
            g.encode(e.encode_descriptor(name, help, None, g.metric_type())?)
        };
        f(&mut e, "send_fps", "Frames encoded per second.", self.fps)?;
        f(
            &mut e,
            "send_bitrate_bits_per_second",
            "Bits encoded per second, all renditions.",
            self.bitrate_bps,
        )?;
        counter(&mut e, "send_frames", "Frames encoded.", self.frames)?;
        gauge(
            &mut e,
            "send_viewers",
            "Viewers connected.",
            self.viewers.len() as i64,
        )?;
        type Get = fn(&ViewerSample) -> f64;
        let gauges: [(&str, &str, Get); 4] = [
            (
                "viewer_rtt_seconds",
                "Round-trip time of the viewer's path.",
                |v| v.rtt_seconds,
            ),
            (
                "viewer_estimate_bits_per_second",
                "What the viewer's path is estimated to carry.",
                |v| v.estimate_bps,
            ),
            (
                "viewer_target_bits_per_second",
                "The bitrate the viewer's controller allows.",
                |v| v.target_bps,
            ),
            (
                "viewer_sent_bits_per_second",
                "Sent to the viewer over the last second.",
                |v| v.sent_bps,
            ),
        ];
        for (name, help, get) in gauges {
            let mut family =
                e.encode_descriptor(name, help, None, ConstGauge::new(0.0f64).metric_type())?;
            for v in &self.viewers {
                let id = v.id.to_string();
                let labels = [
                    ("viewer", id.as_str()),
                    ("path", v.path.as_str()),
                    ("rendition", v.rendition.as_str()),
                ];
                ConstGauge::new(get(v)).encode(family.encode_family(&labels)?)?;
            }
        }
        type Count = fn(&ViewerSample) -> u64;
        let counters: [(&str, &str, Count); 3] = [
            ("viewer_frames_sent", "Frames sent to the viewer.", |v| {
                v.frames_sent
            }),
            (
                "viewer_frames_skipped",
                "Frames not sent to the viewer (too late, or waiting for a keyframe).",
                |v| v.frames_skipped,
            ),
            ("viewer_idrs", "IDRs the viewer's rendition made.", |v| {
                v.idrs
            }),
        ];
        for (name, help, get) in counters {
            let mut family =
                e.encode_descriptor(name, help, None, ConstCounter::new(0u64).metric_type())?;
            for v in &self.viewers {
                let id = v.id.to_string();
                let labels = [("viewer", id.as_str()), ("path", v.path.as_str())];
                ConstCounter::new(get(v)).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

impl SenderSample {
    pub fn encode(self) -> String {
        let mut registry = Registry::with_prefix("inclubit");
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

/// Serves `/metrics` (what `scrape` returns, on each request) and `/healthz` on `addr`.
pub async fn serve(
    addr: std::net::SocketAddr,
    scrape: std::sync::Arc<dyn Fn() -> String + Send + Sync>,
) -> Result<(std::net::SocketAddr, tokio::task::JoinHandle<()>), std::io::Error> {
    use axum::http::header;
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let scrape = scrape.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "text/plain; version=0.0.4; charset=utf-8",
                        )],
                        scrape(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::warn!("metrics server: {e}");
        }
    });
    Ok((local, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::rooms::RelayStats;

    #[test]
    fn sender_metrics_have_a_series_per_viewer() {
        let text = SenderSample {
            fps: 30.0,
            bitrate_bps: 4e6,
            frames: 90,
            viewers: vec![ViewerSample {
                id: 1,
                path: "direct".into(),
                rendition: "full".into(),
                rtt_seconds: 0.02,
                frames_sent: 88,
                frames_skipped: 2,
                ..Default::default()
            }],
        }
        .encode();
        for line in [
            "inclubit_send_viewers 1",
            "inclubit_send_frames_total 90",
            "inclubit_viewer_rtt_seconds{viewer=\"1\",path=\"direct\",rendition=\"full\"} 0.02",
            "inclubit_viewer_frames_sent_total{viewer=\"1\",path=\"direct\"} 88",
            "inclubit_viewer_frames_skipped_total{viewer=\"1\",path=\"direct\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }

    #[test]
    fn text_format_has_every_family() {
        let m = Metrics::default();
        let mut refused = BTreeMap::new();
        refused.insert("room_not_found", 3);
        m.publish_rooms(
            RoomsSnapshot {
                rooms: 2,
                viewers: 5,
                relay_sessions: 1,
                relay: RelayStats {
                    packets: 10,
                    bytes: 12_000,
                    refused: 1,
                    limited: 2,
                },
                refused,
            },
            4,
        );
        m.refused_http("too_many_offers");
        m.set_cert_expiry(Some(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(99),
        ));
        let text = m.encode(Some(BridgeTotals {
            browsers: 3,
            connected: 2,
            media_bytes: 500,
            bitrate: 4000,
        }));
        for line in [
            "# TYPE inclubit_rooms gauge",
            "inclubit_rooms 2",
            "inclubit_peers{role=\"viewer\"} 5",
            "inclubit_relay_bytes_total 12000",
            "inclubit_relay_dropped_packets_total{reason=\"rate_limited\"} 2",
            "inclubit_refused_requests_total{reason=\"room_not_found\"} 3",
            "inclubit_http_refused_requests_total{reason=\"too_many_offers\"} 1",
            "inclubit_malformed_datagrams_total 4",
            "inclubit_bridge_viewers 2",
            "inclubit_certificate_expiry_timestamp_seconds 99",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
    }
}
