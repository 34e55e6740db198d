//! WHEP (draft-ietf-wish-whep): `POST /whep/CODE` with an SDP offer → `201 Created`, the answer
//! and a `Location` to `DELETE` when leaving. The bridge is ICE-lite with every candidate in the
//! answer, so trickle `PATCH` is answered `405` (the draft allows it).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::{json_error, ClientAddr, WebState};
use crate::bridge::core::OfferError;
use crate::bridge::feed::FeedError;
use crate::bridge::BridgeError;
use crate::code::{PairingCode, RoomCode};

/// Largest SDP offer accepted (browsers send 3–10 KB).
const MAX_OFFER: usize = 64 * 1024;

const ALLOW_ORIGIN: (header::HeaderName, &str) = (header::ACCESS_CONTROL_ALLOW_ORIGIN, "*");

pub async fn offer(
    State(state): State<Arc<WebState>>,
    client: Option<axum::Extension<ClientAddr>>,
    Path(code): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Each offer costs a WebRTC session until it connects or times out: so many per client
    // and in all.
    let client = client.map(|axum::Extension(ClientAddr(from))| from);
    if let Some(from) = client {
        let room = code.parse::<PairingCode>().ok().map(|c| c.room.bits());
        let checked = state
            .offers
            .lock()
            .map(|mut l| l.check(std::time::Instant::now(), from.ip(), room));
        if let Ok(Err(wait)) = checked {
            let secs = wait.as_secs_f64().ceil().max(1.0) as u64;
            let mut r = json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_offers",
                format!("too many offers from this address or to this server; retry in {secs} s"),
            );
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r.headers_mut()
                .insert(ALLOW_ORIGIN.0, HeaderValue::from_static(ALLOW_ORIGIN.1));
            return r;
        }
    }
    let Some(bridge) = state.bridge.clone() else {
        return json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "no_bridge",
            "this server does not bridge to browsers".into(),
        );
    };
    let code = match code.parse::<PairingCode>() {
        Ok(c) => c,
        Err(e) => return json_error(StatusCode::NOT_FOUND, "room_not_found", e.to_string()),
    };
    let room = code.room;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ctype.starts_with("application/sdp") {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_content_type",
            "send the offer as Content-Type: application/sdp".into(),
        );
    }
    if body.len() > MAX_OFFER {
        return json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "offer_too_large",
            format!("offers are limited to {MAX_OFFER} bytes"),
        );
    }
    let Ok(sdp) = String::from_utf8(body.to_vec()) else {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "the offer is not UTF-8".into(),
        );
    };
    // Reject what cannot parse before subscribing to anything.
    if let Err(e) = str0m::change::SdpOffer::from_sdp_string(&sdp) {
        return json_error(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            format!(
                "the SDP offer does not parse: {}",
                sdp_error(&e.to_string())
            ),
        );
    }
    match bridge.offer(code, client.map(|a| a.ip()), sdp).await {
        Ok(a) => {
            let mut r = (StatusCode::CREATED, a.sdp).into_response();
            let h = r.headers_mut();
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/sdp"),
            );
            if let Ok(v) = HeaderValue::from_str(&format!("/whep/{room}/{}", a.peer)) {
                h.insert(header::LOCATION, v);
            }
            let hello = a.hello;
            let o = hello.orientation_cdeg;
            for (k, v) in [
                ("inclubit-projection", (hello.projection as u8).to_string()),
                (
                    "inclubit-orientation",
                    format!("{},{},{}", o[0], o[1], o[2]),
                ),
                ("inclubit-size", format!("{}x{}", hello.width, hello.height)),
                (
                    "inclubit-trust",
                    if state.on_camera {
                        "end-to-end"
                    } else {
                        "server"
                    }
                    .to_string(),
                ),
                (
                    "inclubit-lens",
                    format!(
                        "{},{},{},{}",
                        hello.lens.fov_cdeg,
                        hello.lens.centre_e4[0],
                        hello.lens.centre_e4[1],
                        hello.lens.radius_e4
                    ),
                ),
            ] {
                if let Ok(v) = HeaderValue::from_str(&v) {
                    h.insert(k, v);
                }
            }
            h.insert(ALLOW_ORIGIN.0, HeaderValue::from_static(ALLOW_ORIGIN.1));
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(
                    "Location, Inclubit-Projection, Inclubit-Orientation, Inclubit-Size, Inclubit-Lens, Inclubit-Trust",
                ),
            );
            r
        }
        Err(e) => error_response(e),
    }
}

fn error_response(e: BridgeError) -> Response {
    let msg = e.to_string();
    match e {
        BridgeError::Feed(FeedError::NotFound(_)) => {
            json_error(StatusCode::NOT_FOUND, "room_not_found", msg)
        }
        BridgeError::Feed(FeedError::Offline(..)) => {
            let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, "sender_offline", msg);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
            r
        }
        BridgeError::Feed(FeedError::WrongCode(_)) => {
            json_error(StatusCode::FORBIDDEN, "wrong_code", msg)
        }
        BridgeError::Feed(FeedError::Locked(_)) => {
            let mut r = json_error(StatusCode::TOO_MANY_REQUESTS, "room_locked", msg);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("600"));
            r
        }
        BridgeError::Feed(FeedError::Rendezvous(_)) => {
            json_error(StatusCode::BAD_GATEWAY, "rendezvous_unreachable", msg)
        }
        BridgeError::Offer(OfferError::BadSdp(_) | OfferError::Unsupported(_)) => {
            json_error(StatusCode::BAD_REQUEST, "bad_sdp", msg)
        }
        // str0m failed on this offer only (caught): the offer's fault, not the server's.
        BridgeError::Offer(OfferError::Internal(_)) => {
            json_error(StatusCode::BAD_REQUEST, "offer_failed", msg)
        }
        BridgeError::Offer(OfferError::Full(_)) => {
            let mut r = json_error(StatusCode::SERVICE_UNAVAILABLE, "too_many_viewers", msg);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
            r
        }
        BridgeError::Offer(OfferError::NoCodec | OfferError::NoVideo) => {
            json_error(StatusCode::NOT_ACCEPTABLE, "no_usable_codec", msg)
        }
        BridgeError::Stopped | BridgeError::Bind(..) => {
            json_error(StatusCode::SERVICE_UNAVAILABLE, "bridge_stopped", msg)
        }
    }
}

/// str0m's parse errors start with an internal position; keep what tells the user something.
fn sdp_error(e: &str) -> String {
    let lines: Vec<&str> = e
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.contains("PointerOffset"))
        .collect();
    lines.join("; ")
}

pub async fn delete(
    State(state): State<Arc<WebState>>,
    Path((code, session)): Path<(String, String)>,
) -> Response {
    let (Some(bridge), Ok(room), Ok(peer)) = (
        state.bridge.as_ref(),
        code.parse::<RoomCode>(),
        session.parse::<u64>(),
    ) else {
        return json_error(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "no such session".into(),
        );
    };
    if bridge.remove(room, peer).await {
        (StatusCode::OK, [ALLOW_ORIGIN]).into_response()
    } else {
        json_error(
            StatusCode::NOT_FOUND,
            "session_not_found",
            "no such session".into(),
        )
    }
}

/// Trickle ICE is not needed: the answer carries every candidate and the bridge learns the
/// browser's addresses from its connectivity checks.
pub async fn patch() -> Response {
    let mut r = json_error(
        StatusCode::METHOD_NOT_ALLOWED,
        "no_trickle",
        "trickle ICE is not supported; the answer lists every server candidate".into(),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("DELETE, OPTIONS"));
    r
}

/// CORS preflight, so WHEP players on other origins can use the endpoint.
pub async fn options() -> Response {
    (
        StatusCode::NO_CONTENT,
        [
            ALLOW_ORIGIN,
            (
                header::ACCESS_CONTROL_ALLOW_METHODS,
                // PATCH (trickle ICE) is always 405 here: not offered.
                "POST, DELETE, OPTIONS",
            ),
            (header::ACCESS_CONTROL_ALLOW_HEADERS, "Content-Type"),
            (
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                "Location, Inclubit-Projection, Inclubit-Orientation, Inclubit-Size, Inclubit-Lens",
            ),
        ],
    )
        .into_response()
}
