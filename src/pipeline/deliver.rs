//! One viewer's session on the sender: its control stream, its bandwidth estimate, the
//! rendition it is on (moving between them at an IDR of the new one), and one QUIC stream per
//! frame, abandoned when it is too late to be worth showing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use inclubit_rendezvous::peer::bwe::{PathSample, RateConfig, RateController};
use inclubit_rendezvous::wire::media::{Codec, Control, FrameHeader, Preference, Projection};
use tokio::sync::{broadcast, mpsc};

use super::ladder::{Ladder, RenditionChooser, LOW, TOP};
use super::send::Shared;
use super::stats::RateMeter;
use super::PipelineError;
use crate::clock;
use crate::encode::EncodedFrame;
use crate::net::control::{pair_as_sender, read_control, SessionError};

/// How often the estimate, the rendition and the ladder's rates are revisited.
const TICK: Duration = Duration::from_millis(100);
/// A move to another rendition that has not found its IDR by then is given up.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(3);

/// What the sender's stats line shows for one viewer.
#[derive(Debug, Clone, Copy, Default)]
pub struct ViewerRate {
    pub rendition: usize,
    pub estimate: u64,
    pub target: u64,
    /// Bits per second actually sent to this viewer.
    pub sent: f64,
    /// The queue its estimate reads on the path, and the share of packets lost.
    pub queue: Duration,
    pub loss: f64,
}

/// Where a viewer is in the ladder: on `current`, perhaps moving to `to` from frame `at` on.
struct Place {
    current: usize,
    switch: Option<(usize, u64, Instant)>,
    chooser: RenditionChooser,
}

impl Place {
    /// Whether `f` is the frame this viewer gets for its frame number.
    fn takes(&self, f: &EncodedFrame) -> bool {
        let r = f.rendition as usize;
        match self.switch {
            Some((to, at, _)) if f.seq >= at => r == to,
            _ => r == self.current,
        }
    }
}

/// A paired viewer's control stream and what it asked for in its hello.
pub(super) type ControlStream = (quinn::SendStream, quinn::RecvStream, Preference);

/// Accepts a viewer's control stream and pairs with it (`peer::pairing`): nothing of the stream
/// goes to a viewer that has not proved it holds the code's secret on this connection. A failed
/// pairing is counted against the code.
pub(super) async fn pair_viewer(
    id: usize,
    conn: &quinn::Connection,
    shared: &Shared,
) -> Result<ControlStream, PipelineError> {
    let (mut send, mut recv) = tokio::time::timeout(Duration::from_secs(5), conn.accept_bi())
        .await
        .map_err(|_| PipelineError::Protocol("no control stream within 5 s".into()))?
        .map_err(|e| PipelineError::Connection(e.to_string()))?;
    let code = shared
        .code()
        .ok_or_else(|| PipelineError::Other("sender state poisoned".into()))?;
    match pair_as_sender(conn, &mut send, &mut recv, code.secret).await {
        Ok((name, prefer)) => {
            tracing::debug!(id, %name, ?prefer, "paired");
            Ok((send, recv, prefer))
        }
        Err(e @ SessionError::Pairing(_)) => {
            shared.pairing_failed();
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn serve_viewer(
    id: usize,
    conn: quinn::Connection,
    shared: &Arc<Shared>,
    mut frames: broadcast::Receiver<Arc<EncodedFrame>>,
    (mut ctrl_send, mut ctrl_recv, mut prefer): ControlStream,
) -> Result<(), PipelineError> {
    let ladder = shared.ladder.clone();
    let mut hello = shared.hello.clone();
    hello.next_seq = ladder.renditions[TOP].next_seq.load(Ordering::Relaxed);
    ctrl_send
        .write_all(&Control::Hello(hello).frame())
        .await
        .map_err(|e| PipelineError::Connection(e.to_string()))?;

    let mut ctl = RateController::new(
        Instant::now(),
        RateConfig {
            floor: ladder.cfg.floor as u64,
            ceiling: ladder.cfg.ceiling as u64,
            // Half the ceiling: a first picture that looks like the stream (a start far
            // lower made the joining IDR a blur), and a weak path is found within a second.
            start: ladder.cfg.ceiling as u64 / 2,
        },
    );
    // Where to start: the top, unless others hold it well above what this viewer starts at
    // (then the half-size picture, until its estimate shows it can carry more).
    let others_top = others_top_rate(shared, id);
    let current = match others_top {
        _ if !ladder.has_low => TOP,
        _ if prefer.rendition.is_some() => pinned(&prefer).unwrap_or(TOP),
        Some(rate) if rate as u64 * 2 > 3 * ctl.target() => LOW,
        _ => RenditionChooser::start(ctl.target(), ladder.cfg.top_min() as u64),
    };
    let mut place = Place {
        current,
        switch: None,
        chooser: RenditionChooser::default(),
    };
    ladder.renditions[current]
        .users
        .fetch_add(1, Ordering::Relaxed);
    // This viewer starts at an IDR of its rendition, a frame or two from now.
    let first = ladder.renditions[TOP].next_seq.load(Ordering::Relaxed) + 1;
    ladder.renditions[current].keyframe_at(first);

    let (ctrl_tx, mut ctrl_rx) = mpsc::channel::<Control>(64);
    let reader = tokio::spawn(async move {
        while let Ok(Some(m)) = read_control(&mut ctrl_recv).await {
            if ctrl_tx.send(m).await.is_err() {
                break;
            }
        }
    });
    let (skip_tx, mut skip_rx) = mpsc::unbounded_channel::<u64>();
    let inflight = Arc::new(AtomicU64::new(0));
    let max_inflight = (shared.budget.as_secs_f64() * shared.hello.fps_milli as f64 / 1000.0)
        .ceil()
        .max(2.0) as u64;
    let mut waiting_key = true;
    let mut last_seq: Option<u64> = None;
    let mut sent = RateMeter::default();
    let mut logged_target = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let mut rekeys = shared.rekeys.subscribe();
    // The newest keyframe sent to this viewer; frames sent since the counters were updated.
    let mut last_key_sent: Option<u64> = None;
    let mut sent_now = 0u64;
    let result = loop {
        let mut skipped = Vec::new();
        tokio::select! {
            Ok(()) = rekeys.changed() => {
                // This viewer stays; a bridge behind it must prove new browsers' codes.
                if let Err(e) = ctrl_send.write_all(&Control::Rekeyed.frame()).await {
                    break Err(PipelineError::Connection(e.to_string()));
                }
            }
            f = frames.recv() => match f {
                Ok(frame) => {
                    if frame.seq < first || !place.takes(&frame) {
                        continue;
                    }
                    if let Some((to, _, _)) = place.switch.filter(|s| frame.rendition as usize == s.0) {
                        // Moved: from here on frames come from the new rendition.
                        ladder.renditions[place.current].users.fetch_sub(1, Ordering::Relaxed);
                        tracing::info!(id, from = ladder.renditions[place.current].name(), to = ladder.renditions[to].name(), "viewer moved");
                        place.current = to;
                        place.switch = None;
                        if !frame.keyframe {
                            waiting_key = true;
                            ladder.renditions[to].keyframe_after_loss();
                        }
                    }
                    // Frame numbers this viewer will never get (it fell behind the channel).
                    if let Some(l) = last_seq.filter(|l| frame.seq > l + 1) {
                        skipped.extend((l + 1..frame.seq).take(1024));
                        waiting_key = true;
                    }
                    last_seq = Some(frame.seq);
                    let age = Duration::from_micros(clock::now_us().saturating_sub(frame.capture_us));
                    if waiting_key && !frame.keyframe {
                        skipped.push(frame.seq);
                    } else if age >= shared.budget || inflight.load(Ordering::Relaxed) >= max_inflight {
                        tracing::debug!(id, seq = frame.seq, ?age, inflight = inflight.load(Ordering::Relaxed), "frame not sent: too late");
                        skipped.push(frame.seq);
                        waiting_key = true;
                        ctl.on_frame_abandoned(Instant::now(), frame.seq);
                    } else {
                        waiting_key = false;
                        sent_now += 1;
                        if frame.keyframe {
                            last_key_sent = Some(frame.seq);
                        }
                        ctl.on_frame_sent(Instant::now(), frame.seq, frame.data.len());
                        sent.record(Instant::now(), (frame.data.len() + FrameHeader::LEN) as u64);
                        let deadline = tokio::time::Instant::now() + (shared.budget - age);
                        tokio::spawn(send_frame(conn.clone(), frame, shared.hello.projection, deadline, skip_tx.clone(), inflight.clone()));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    // This viewer's task fell behind: its frames only are lost (the gap is
                    // reported with the next frame it takes).
                    waiting_key = true;
                }
                Err(broadcast::error::RecvError::Closed) => break Ok(()),
            },
            Some(seq) = skip_rx.recv() => {
                tracing::debug!(id, seq, "frame abandoned at its deadline");
                skipped.push(seq);
                waiting_key = true;
                ctl.on_frame_abandoned(Instant::now(), seq);
            }
            m = ctrl_rx.recv() => match m {
                Some(Control::KeyframeRequest { seen }) => {
                    // A keyframe sent after what the viewer had seen is on its way: the
                    // request crossed it (skipping frames now would break what it starts).
                    if last_key_sent.is_some_and(|k| k > seen) {
                        tracing::debug!(id, seen, "keyframe request already answered");
                    } else {
                        tracing::debug!(id, seen, "keyframe request");
                        waiting_key = true;
                        ladder.renditions[place.current].keyframe_after_loss();
                    }
                }
                Some(Control::Arrivals(list)) => ctl.on_arrivals(Instant::now(), &list),
                Some(Control::Prefer(p)) => {
                    tracing::debug!(id, ?p, "viewer preference");
                    prefer = p;
                }
                Some(Control::Ping { viewer_us }) => {
                    let pong = Control::Pong { viewer_us, sender_us: clock::now_us() };
                    if let Err(e) = ctrl_send.write_all(&pong.frame()).await {
                        break Err(PipelineError::Connection(e.to_string()));
                    }
                }
                Some(Control::Stats(s)) => {
                    if let Ok(mut v) = shared.viewers.lock() {
                        if let Some(slot) = v.iter_mut().find(|s| s.id == id) {
                            slot.stats = s;
                        }
                    }
                }
                Some(other) => break Err(PipelineError::Protocol(format!("unexpected {other:?}"))),
                None => break Ok(()),
            },
            _ = tick.tick() => {
                let now = Instant::now();
                let path = conn.stats().path;
                ctl.on_path(now, PathSample { rtt: path.rtt, sent_packets: path.sent_packets, lost_packets: path.lost_packets });
                let target = capped(&prefer, ctl.poll(now));
                if target.abs_diff(logged_target) > logged_target / 5 {
                    tracing::debug!(id, target, queue = ?ctl.queue_delay(), probing = ctl.probing(), "rate");
                    logged_target = target;
                }
                revisit_place(&mut place, &ladder, shared, id, now, (target, ctl.probing()), pinned(&prefer), last_seq);
                let rate = ViewerRate {
                    // A viewer on its way to a rendition sets that one's rate already.
                    rendition: place.switch.map_or(place.current, |s| s.0),
                    estimate: ctl.estimate(),
                    target,
                    sent: sent.rates(now).1,
                    queue: ctl.queue_delay(),
                    loss: ctl.loss(),
                };
                publish(shared, id, rate);
                if let Ok(mut v) = shared.viewers.lock() {
                    if let Some(slot) = v.iter_mut().find(|s| s.id == id) {
                        slot.sent_frames += std::mem::take(&mut sent_now);
                    }
                }
            }
            _ = conn.closed() => break Ok(()),
        }
        if !skipped.is_empty() {
            if waiting_key {
                // The lower rate first, so the IDR that repairs this is made at it.
                let mut rate = shared.viewer_rate(id).unwrap_or_default();
                let target = capped(&prefer, ctl.target());
                if target < rate.target {
                    rate.target = target;
                    rate.rendition = place.switch.map_or(place.current, |s| s.0);
                    publish(shared, id, rate);
                }
                ladder.renditions[place.current].keyframe_after_loss();
            }
            if let Ok(mut v) = shared.viewers.lock() {
                if let Some(slot) = v.iter_mut().find(|s| s.id == id) {
                    slot.skipped += skipped.len() as u64;
                }
            }
            for seq in skipped {
                if let Err(e) = ctrl_send.write_all(&Control::Skipped { seq }.frame()).await {
                    reader.abort();
                    leave(&ladder, &place);
                    return Err(PipelineError::Connection(e.to_string()));
                }
            }
        }
    };
    reader.abort();
    leave(&ladder, &place);
    result
}

/// Puts this viewer's rates where the stats line and the other sessions see them, and sets
/// each rendition's bitrate from all viewers'.
fn publish(shared: &Shared, id: usize, rate: ViewerRate) {
    let all: Vec<(usize, u64)> = match shared.viewers.lock() {
        Ok(mut v) => {
            if let Some(slot) = v.iter_mut().find(|s| s.id == id) {
                slot.rate = Some(rate);
            }
            v.iter()
                .filter_map(|s| s.rate.map(|r| (r.rendition, r.target)))
                .collect()
        }
        Err(_) => Vec::new(),
    };
    shared.ladder.follow(&all);
}

/// The top rendition's rate as set by the other viewers on it, if any.
fn others_top_rate(shared: &Shared, id: usize) -> Option<u32> {
    let v = shared.viewers.lock().ok()?;
    v.iter()
        .filter(|s| s.id != id)
        .filter_map(|s| s.rate)
        .filter(|r| r.rendition == TOP)
        .map(|r| r.target.min(u32::MAX as u64) as u32)
        .max()
}

/// The rendition a viewer asked to be on, if any (the ladder has two).
fn pinned(prefer: &Preference) -> Option<usize> {
    prefer.rendition.map(|r| (r as usize).min(LOW))
}

/// `target` within what the viewer asked for.
fn capped(prefer: &Preference, target: u64) -> u64 {
    match prefer.max_bitrate {
        0 => target,
        max => target.min(max),
    }
}

/// Starts a move to another rendition when the estimate (`target`, still `probing`) says so or
/// the viewer asked for one (`pinned`); gives up one that stalls.
#[allow(clippy::too_many_arguments)]
fn revisit_place(
    place: &mut Place,
    ladder: &Ladder,
    shared: &Shared,
    id: usize,
    now: Instant,
    (target, probing): (u64, bool),
    pinned: Option<usize>,
    last_seq: Option<u64>,
) {
    if let Some((to, _, began)) = place.switch {
        if now.saturating_duration_since(began) > SWITCH_TIMEOUT {
            tracing::warn!(
                id,
                to = ladder.renditions[to].name(),
                "no IDR to move on; staying"
            );
            ladder.renditions[to].users.fetch_sub(1, Ordering::Relaxed);
            place.switch = None;
            ladder.renditions[place.current].keyframe_after_loss();
        }
        return;
    }
    if !ladder.has_low {
        return;
    }
    // Against the top's rate as the others hold it: alone there, the top follows this viewer.
    let top_rate = others_top_rate(shared, id).unwrap_or(ladder.cfg.top_min());
    let to = match pinned {
        Some(r) => (r != place.current).then_some(r),
        None => place.chooser.update(
            now,
            place.current,
            (target, probing),
            top_rate as u64,
            ladder.cfg.top_min() as u64,
        ),
    };
    let Some(to) = to else {
        return;
    };
    // Its rate first: a rendition that starts for this viewer starts at what it can carry.
    let mut viewers: Vec<(usize, u64)> = match shared.viewers.lock() {
        Ok(v) => v
            .iter()
            .filter(|s| s.id != id)
            .filter_map(|s| s.rate.map(|r| (r.rendition, r.target)))
            .collect(),
        Err(_) => Vec::new(),
    };
    viewers.push((to, target));
    ladder.follow(&viewers);
    ladder.renditions[to].users.fetch_add(1, Ordering::Relaxed);
    // From a frame neither encoder has made yet (the half-size one starts with the next
    // picture it gets), and after everything this viewer already has.
    let next = ladder.renditions[TOP]
        .next_seq
        .load(Ordering::Relaxed)
        .max(ladder.renditions[LOW].next_seq.load(Ordering::Relaxed));
    let at = next.max(last_seq.map_or(0, |l| l + 1)) + 1;
    ladder.renditions[to].keyframe_at(at);
    place.switch = Some((to, at, now));
    tracing::debug!(
        id,
        to = ladder.renditions[to].name(),
        at,
        target,
        "moving viewer"
    );
}

fn leave(ladder: &Ladder, place: &Place) {
    ladder.renditions[place.current]
        .users
        .fetch_sub(1, Ordering::Relaxed);
    if let Some((to, _, _)) = place.switch {
        ladder.renditions[to].users.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn send_frame(
    conn: quinn::Connection,
    frame: Arc<EncodedFrame>,
    projection: Projection,
    deadline: tokio::time::Instant,
    skipped: mpsc::UnboundedSender<u64>,
    inflight: Arc<AtomicU64>,
) {
    inflight.fetch_add(1, Ordering::Relaxed);
    let header = FrameHeader {
        seq: frame.seq,
        capture_us: frame.capture_us,
        keyframe: frame.keyframe,
        has_config: frame.keyframe,
        codec: Codec::H264,
        projection,
        width: frame.width as u16,
        height: frame.height as u16,
        payload_len: frame.data.len() as u32,
    };
    let ok = match tokio::time::timeout_at(deadline, conn.open_uni()).await {
        Ok(Ok(mut s)) => {
            let sent = tokio::time::timeout_at(deadline, async {
                s.write_all(&header.encode()).await.ok()?;
                s.write_all(&frame.data).await.ok()?;
                s.finish().ok()?;
                // Done when the viewer has acknowledged every byte.
                s.stopped().await.ok()
            })
            .await;
            match sent {
                Ok(Some(None)) => true,
                _ => {
                    // Too late or refused: abandon it rather than let it queue.
                    let _ = s.reset(1u32.into());
                    false
                }
            }
        }
        _ => false,
    };
    inflight.fetch_sub(1, Ordering::Relaxed);
    if !ok && conn.close_reason().is_none() {
        let _ = skipped.send(frame.seq);
    }
}
