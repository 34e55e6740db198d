'use strict';
// inclubit browser viewer: WHEP (WebRTC) in, WebGL2 out. The sphere is sampled by view
// direction per pixel, the same maths as shaders/equirect.wgsl: +X right, +Y up, front is -Z.
const $ = (id) => document.getElementById(id);
const video = $('v'), canvas = $('c'), statusEl = $('s'), statsEl = $('st'), vrBtn = $('vr');
const code = decodeURIComponent(location.pathname.split('/').filter(Boolean).pop() || '');
const query = new URLSearchParams(location.search);
const measure = query.has('measure');
// ?scale=0.5 renders VR at half the headset's resolution per axis (weak GPUs).
const xrScale = Math.min(1, Math.max(0.1, +(query.get('scale') || 1)));

// Exposed for tests and the benchmark.
const S = (window.inclubit = {
  status: '', phase: 'connecting', frames: 0, played: false, projection: 0,
  orient: [0, 0, 0], yaw: 0, pitch: 0, fov: 90, marks: [], xrFrames: 0, pc: null,
  resource: null, lastFrame: 0, fps: 0, rtt: 0, probeXr: false, xrEyes: [], lens: [195, 0.5, 0.5, 0.5], postAt: 0, joinMs: 0, connectMs: 0, answerMs: 0, trust: '',
});

function show(phase, msg) {
  S.phase = phase;
  S.status = msg;
  statusEl.textContent = msg;
  statusEl.hidden = !msg;
}

// ---- WHEP --------------------------------------------------------------------------------
let retryTimer = 0;
function retry(ms) {
  clearTimeout(retryTimer);
  retryTimer = setTimeout(connect, ms);
}

async function hangUp() {
  const pc = S.pc, res = S.resource;
  S.pc = null;
  S.resource = null;
  if (pc) pc.close();
  if (res) fetch(res, { method: 'DELETE' }).catch(() => {});
}

async function connect() {
  await hangUp();
  if (!S.played) show('connecting', 'connecting…');
  const pc = new RTCPeerConnection();
  S.pc = pc;
  pc.addTransceiver('video', { direction: 'recvonly' });
  pc.ontrack = (e) => {
    video.srcObject = new MediaStream([e.track]);
    video.play().catch(() => {});
  };
  pc.onconnectionstatechange = () => {
    if (S.pc !== pc) return;
    const st = pc.connectionState;
    if (st === 'connected' && !S.connectMs) S.connectMs = performance.now() - S.postAt;
    if (st === 'failed' || st === 'disconnected') {
      show('reconnecting', 'reconnecting…');
      retry(1000);
    }
  };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  let r;
  S.postAt = performance.now();
  try {
    r = await fetch('/whep/' + encodeURIComponent(code), {
      method: 'POST', headers: { 'Content-Type': 'application/sdp' }, body: offer.sdp,
    });
  } catch (e) {
    show('reconnecting', 'cannot reach the server; retrying…');
    return retry(2000);
  }
  if (S.pc !== pc) return;
  if (r.status !== 201) {
    const err = await r.json().catch(() => ({}));
    pc.close();
    S.pc = null;
    if (r.status === 404 && !S.played) {
      show('not_found', err.message ? code + ': ' + err.message : 'room ' + code + ' not found');
      return retry(5000);
    }
    if (r.status === 503 && err.error === 'too_many_viewers') {
      show('full', 'this room has all the viewers it can take; retrying…');
      return retry(10000);
    }
    if (r.status === 404 || r.status === 503) {
      show('waiting', 'waiting for the camera…');
      return retry(2000);
    }
    show('error', 'error: ' + (err.message || r.status));
    return retry(5000);
  }
  S.answerMs = performance.now() - S.postAt;
  S.resource = r.headers.get('Location');
  // Who can see the stream: with `send --web` only the camera PC; else this server too.
  S.trust = r.headers.get('Inclubit-Trust') || 'server';
  S.projection = +(r.headers.get('Inclubit-Projection') || 0);
  S.orient = (r.headers.get('Inclubit-Orientation') || '0,0,0').split(',').map((x) => +x / 100);
  // fov (centidegrees), centre x, y and radius (1/10000), as in the stream hello.
  S.lens = (r.headers.get('Inclubit-Lens') || '19500,5000,5000,5000').split(',').map((x, i) => +x / (i ? 1e4 : 100));
  await pc.setRemoteDescription({ type: 'answer', sdp: await r.text() });
  if (!S.played) show('connecting', 'starting the stream…');
}

// A stream that stops delivering frames: the camera went away.
setInterval(() => {
  if (S.played && S.pc && performance.now() - S.lastFrame > 2000 && S.phase === 'playing') {
    show('waiting', 'waiting for the camera…');
    retry(0);
  }
  if (S.pc && S.phase === 'playing') {
    S.pc.getStats().then((st) => st.forEach((x) => {
      if (x.type === 'inbound-rtp' && x.kind === 'video') S.fps = x.framesPerSecond || 0;
      if (x.type === 'candidate-pair' && x.nominated && x.currentRoundTripTime) S.rtt = x.currentRoundTripTime * 1000;
    })).catch(() => {});
  }
  const trust = S.trust === 'end-to-end'
    ? 'end to end: served by the camera PC'
    : `through ${location.host}, which can see the stream`;
  statsEl.textContent = S.played
    ? `${code} · ${video.videoWidth}×${video.videoHeight} · ${S.fps.toFixed(0)} fps · rtt ${S.rtt.toFixed(0)} ms · ${S.frames} frames · ${trust}`
    : code;
}, 1000);

// ---- frames ------------------------------------------------------------------------------
let fresh = false;
const bar = document.createElement('canvas');
function onFrame(now, meta) {
  // Chromium hands out a tiny placeholder before the first real picture: not playing yet.
  if (meta.width < 16 || meta.height < 16) {
    video.requestVideoFrameCallback(onFrame);
    return;
  }
  S.frames++;
  S.lastFrame = performance.now();
  fresh = true;
  if (!S.played || S.phase !== 'playing') {
    // Join (WHEP POST) to the first decoded frame on screen.
    if (!S.played) {
      S.joinMs = now - S.postAt;
      S.firstSize = [meta.width, meta.height];
    }
    S.played = true;
    show('playing', '');
  }
  if (measure) readBarcode(meta);
  video.requestVideoFrameCallback(onFrame);
}
video.requestVideoFrameCallback(onFrame);

// The test card's frame number (24 bits + checksum, top band), for glass-to-render latency.
function readBarcode(meta) {
  const w = video.videoWidth, h = video.videoHeight;
  const c = Math.min(32, Math.max(8, Math.floor(w / 64 / 8) * 8));
  const top = Math.floor(Math.floor(h / 6) / c) * c;
  bar.width = 34 * c;
  bar.height = c;
  const g = bar.getContext('2d', { willReadFrequently: true });
  g.drawImage(video, 0, top, 34 * c, c, 0, 0, 34 * c, c);
  const px = g.getImageData(0, 0, 34 * c, c).data;
  let word = 0;
  for (let b = 0; b < 32; b++) {
    const i = (((c / 2) | 0) * 34 * c + (2 + b) * c + ((c / 2) | 0)) * 4;
    word = ((word << 1) | (0.2126 * px[i] + 0.7152 * px[i + 1] + 0.0722 * px[i + 2] > 125 ? 1 : 0)) >>> 0;
  }
  const n = word >>> 8;
  const b1 = (n >>> 16) & 255, b2 = (n >>> 8) & 255, b3 = n & 255;
  const sum = (((b1 ^ b2 ^ b3 ^ 0x5a) + (((b1 << 3) | (b1 >>> 5)) & 255)) & 255);
  if ((word & 255) === sum) {
    S.marks.push([n, performance.timeOrigin + (meta.expectedDisplayTime || performance.now())]);
  }
}

// ---- WebGL2 ------------------------------------------------------------------------------
const gl = canvas.getContext('webgl2', { xrCompatible: true, antialias: false });
const VS = `#version 300 es
out vec2 ndc;
void main(){vec2 p=vec2(float((gl_VertexID<<1)&2),float(gl_VertexID&2))*2.-1.;ndc=p;gl_Position=vec4(p,0,1);}`;
const FS = `#version 300 es
precision highp float;
in vec2 ndc;
out vec4 o;
uniform sampler2D tex;
uniform mat3 rot;      // camera to video directions
uniform vec4 frust;    // ray = (ndc.x*x+z, ndc.y*y+w, -1)
uniform int proj;      // 0 equirect, 1 stereo top-bottom, 2 dual fisheye
uniform int eye;       // 0 left / top, 1 right / bottom
uniform vec4 lens;     // dual fisheye: fov (radians), centre x (half-widths), y, radius (heights)
uniform float aspect;  // picture height / width
const float PI=3.14159265358979;
vec2 fish(vec3 l,float side){
  float th=acos(clamp(l.z,-1.,1.));
  vec2 q=length(l.xy)>1e-6?normalize(l.xy):vec2(0);
  float r=th/(lens.x*.5)*lens.w;
  return vec2(.5*side+.5*lens.y+q.x*r*aspect,lens.z-q.y*r);
}
void main(){
  vec3 d=normalize(rot*normalize(vec3(ndc.x*frust.x+frust.z,ndc.y*frust.y+frust.w,-1.)));
  if(proj==2){
    float tf=acos(clamp(-d.z,-1.,1.));
    float t=smoothstep(0.,1.,clamp((lens.x*.5-tf)/(lens.x-PI),0.,1.));
    vec3 a=texture(tex,fish(vec3(d.x,d.y,-d.z),0.)).rgb;
    vec3 b=texture(tex,fish(vec3(-d.x,d.y,d.z),1.)).rgb;
    o=vec4(mix(b,a,t),1);return;
  }
  vec2 uv=vec2(.5+atan(d.x,-d.z)/(2.*PI),.5-asin(clamp(d.y,-1.,1.))/PI);
  if(proj==1)uv.y=uv.y*.5+float(eye)*.5;
  o=vec4(texture(tex,uv).rgb,1);
}`;
function compile(type, src) {
  const s = gl.createShader(type);
  gl.shaderSource(s, src);
  gl.compileShader(s);
  if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
  return s;
}
const prog = gl.createProgram();
gl.attachShader(prog, compile(gl.VERTEX_SHADER, VS));
gl.attachShader(prog, compile(gl.FRAGMENT_SHADER, FS));
gl.linkProgram(prog);
const U = {};
for (const n of ['tex', 'rot', 'frust', 'proj', 'eye', 'lens', 'aspect']) U[n] = gl.getUniformLocation(prog, n);
const tex = gl.createTexture();
gl.bindTexture(gl.TEXTURE_2D, tex);
for (const [k, v] of [[gl.TEXTURE_MIN_FILTER, gl.LINEAR], [gl.TEXTURE_MAG_FILTER, gl.LINEAR],
  [gl.TEXTURE_WRAP_S, gl.REPEAT], [gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE]]) gl.texParameteri(gl.TEXTURE_2D, k, v);
gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, 1, 1, 0, gl.RGBA, gl.UNSIGNED_BYTE, new Uint8Array([0, 0, 0, 255]));

// Column-major 3×3 maths (WebGL's layout).
const mul = (a, b) => {
  const r = new Float32Array(9);
  for (let c = 0; c < 3; c++) for (let i = 0; i < 3; i++)
    r[c * 3 + i] = a[i] * b[c * 3] + a[3 + i] * b[c * 3 + 1] + a[6 + i] * b[c * 3 + 2];
  return r;
};
const rad = Math.PI / 180;
// Yaw about +Y (right positive), then pitch about X (up positive), then roll about Z.
function pose(yaw, pitch, roll) {
  const sy = Math.sin(-yaw * rad), cy = Math.cos(-yaw * rad);
  const sp = Math.sin(pitch * rad), cp = Math.cos(pitch * rad);
  const r = [cy, 0, -sy, sy * sp, cp, cy * sp, sy * cp, -sp, cy * cp];
  const sr = Math.sin(roll * rad), cr = Math.cos(roll * rad);
  return mul(r, [cr, sr, 0, -sr, cr, 0, 0, 0, 1]);
}
function quat(q) {
  const { x, y, z, w } = q;
  return [1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w),
    2 * (x * y - z * w), 1 - 2 * (x * x + z * z), 2 * (y * z + x * w),
    2 * (x * z + y * w), 2 * (y * z - x * w), 1 - 2 * (x * x + y * y)];
}

function upload() {
  if (fresh && video.readyState >= 2) {
    gl.bindTexture(gl.TEXTURE_2D, tex);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, video);
    fresh = false;
  }
}

function draw(rot, frust, eye) {
  gl.useProgram(prog);
  gl.activeTexture(gl.TEXTURE0);
  gl.bindTexture(gl.TEXTURE_2D, tex);
  gl.uniform1i(U.tex, 0);
  gl.uniformMatrix3fv(U.rot, false, mul(pose(...S.orient), rot));
  gl.uniform4fv(U.frust, frust);
  gl.uniform1i(U.proj, S.projection);
  gl.uniform1i(U.eye, eye);
  gl.uniform4f(U.lens, S.lens[0] * rad, S.lens[1], S.lens[2], S.lens[3]);
  gl.uniform1f(U.aspect, video.videoWidth ? video.videoHeight / video.videoWidth : 0.5);
  gl.drawArrays(gl.TRIANGLES, 0, 3);
}

function frame() {
  if (xrSession) return;
  requestAnimationFrame(frame);
  render();
}
function render() {
  const w = Math.round(canvas.clientWidth * devicePixelRatio);
  const h = Math.round(canvas.clientHeight * devicePixelRatio);
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  upload();
  gl.bindFramebuffer(gl.FRAMEBUFFER, null);
  gl.viewport(0, 0, w, h);
  const t = Math.tan((S.fov * rad) / 2);
  draw(pose(S.yaw, S.pitch, 0), [t * (w / Math.max(h, 1)), t, 0, 0], 0);
}
requestAnimationFrame(frame);
// Tests: the colour at the centre of the view for a pose, rendered now.
const centre = (x, y) => {
  const px = new Uint8Array(4);
  gl.readPixels(x, y, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
  return [px[0], px[1], px[2]];
};
S.probe = (yaw, pitch) => {
  S.yaw = yaw;
  S.pitch = pitch;
  render();
  return centre(canvas.width >> 1, canvas.height >> 1);
};

// ---- look around -------------------------------------------------------------------------
const ptrs = new Map();
let pinch = 0;
canvas.addEventListener('pointerdown', (e) => {
  canvas.setPointerCapture(e.pointerId);
  ptrs.set(e.pointerId, [e.clientX, e.clientY]);
});
canvas.addEventListener('pointerup', (e) => { ptrs.delete(e.pointerId); pinch = 0; });
canvas.addEventListener('pointercancel', (e) => { ptrs.delete(e.pointerId); pinch = 0; });
canvas.addEventListener('pointermove', (e) => {
  const p = ptrs.get(e.pointerId);
  if (!p) return;
  if (ptrs.size === 2) {
    ptrs.set(e.pointerId, [e.clientX, e.clientY]);
    const [a, b] = [...ptrs.values()];
    const d = Math.hypot(a[0] - b[0], a[1] - b[1]);
    if (pinch) zoom(pinch / d);
    pinch = d;
    return;
  }
  const k = S.fov / canvas.clientHeight;
  S.yaw -= (e.clientX - p[0]) * k;
  S.pitch = Math.max(-89.9, Math.min(89.9, S.pitch + (e.clientY - p[1]) * k));
  ptrs.set(e.pointerId, [e.clientX, e.clientY]);
});
const zoom = (f) => { S.fov = Math.max(30, Math.min(120, S.fov * f)); };
canvas.addEventListener('wheel', (e) => { e.preventDefault(); zoom(Math.exp(e.deltaY * 0.001)); }, { passive: false });
addEventListener('keydown', (e) => { if (e.key === 'r' || e.key === 'R') { S.yaw = 0; S.pitch = 0; S.fov = 90; } });

// ---- WebXR -------------------------------------------------------------------------------
let xrSession = null, xrSpace = null;
async function enterVR() {
  const session = await navigator.xr.requestSession('immersive-vr');
  await gl.makeXRCompatible();
  session.updateRenderState({ baseLayer: new XRWebGLLayer(session, gl, { framebufferScaleFactor: xrScale }) });
  xrSpace = await session.requestReferenceSpace('local');
  xrSession = session;
  vrBtn.textContent = 'Exit VR';
  session.addEventListener('end', () => {
    xrSession = null;
    vrBtn.textContent = 'Enter VR';
    requestAnimationFrame(frame);
  });
  session.requestAnimationFrame(xrFrame);
}
function xrFrame(t, xf) {
  const session = xf.session;
  session.requestAnimationFrame(xrFrame);
  const vp = xf.getViewerPose(xrSpace);
  if (!vp) return;
  upload();
  const layer = session.renderState.baseLayer;
  gl.bindFramebuffer(gl.FRAMEBUFFER, layer.framebuffer);
  vp.views.forEach((view, i) => {
    const v = layer.getViewport(view);
    gl.viewport(v.x, v.y, v.width, v.height);
    const P = view.projectionMatrix;
    // Head rotation only: the scene is at infinity, so position does not move it.
    draw(quat(view.transform.orientation), [1 / P[0], 1 / P[5], P[8] / P[0], P[9] / P[5]],
      view.eye === 'right' ? 1 : view.eye === 'left' ? 0 : i);
    if (S.probeXr) S.xrEyes[i] = centre(v.x + (v.width >> 1), v.y + (v.height >> 1));
  });
  S.xrFrames++;
}
// "Enter VR" only where an immersive session can start; checked again when a headset appears.
S.checkXR = () => {
  if (navigator.xr) navigator.xr.isSessionSupported('immersive-vr').then((ok) => { vrBtn.hidden = !ok; }).catch(() => {});
};
S.checkXR();
if (navigator.xr) navigator.xr.addEventListener('devicechange', S.checkXR);
vrBtn.addEventListener('click', () => {
  if (xrSession) xrSession.end();
  else enterVR().catch((e) => show(S.phase, 'VR: ' + e.message));
});

addEventListener('pagehide', () => {
  if (S.resource) fetch(S.resource, { method: 'DELETE', keepalive: true }).catch(() => {});
});
if (!code) show('not_found', 'no room code in the address');
else connect();
