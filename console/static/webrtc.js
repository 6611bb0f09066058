// Live video over WebRTC, as an Echo Show or a Nest Hub gets it: a receive-only peer connection
// whose offer carries every ICE candidate (no trickle: Alexa and Google send none either),
// answered by camvoice's engine. The console's live view falls back to HLS when WebRTC does not
// get a frame through; the simulator plays what its assistant's path answered.
(function () {
  "use strict";
  var FIRST_FRAME_MS = 10000; // no frame by then: WebRTC is not getting through
  var GATHER_MS = 5000; // offer what was gathered by then (an unreachable STUN or TURN server)

  function iceServers(element) {
    try {
      return JSON.parse(element.dataset.ice || "[]");
    } catch (error) {
      return [];
    }
  }

  function gathered(pc) {
    return new Promise(function (resolve) {
      if (pc.iceGatheringState === "complete") {
        resolve();
        return;
      }
      setTimeout(resolve, GATHER_MS);
      pc.addEventListener("icegatheringstatechange", function () {
        if (pc.iceGatheringState === "complete") {
          resolve();
        }
      });
    });
  }

  // A peer connection that receives video and audio, and its complete offer.
  function offered(ice) {
    var started = performance.now();
    var pc = new RTCPeerConnection({ iceServers: ice, bundlePolicy: "max-bundle" });
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.addTransceiver("audio", { direction: "recvonly" });
    return pc.createOffer()
      .then(function (offer) { return pc.setLocalDescription(offer); })
      .then(function () { return gathered(pc); })
      .then(function () {
        return { pc: pc, sdp: pc.localDescription.sdp, gatherMs: performance.now() - started };
      });
  }

  // Play what `pc` receives in `video`; resolves at the first rendered frame, rejects when the
  // connection fails or no frame came in time. Counts rendered frames on the element
  // (camvoiceFrames) and keeps two figures: offer sent -> first frame (firstFrameMs), and page
  // navigation -> first frame (sinceLoadMs).
  function play(pc, video, sentAt) {
    video.camvoicePeer = pc;
    video.camvoiceFrames = 0;
    // The receivers' tracks exist from addTransceiver on: no race with the "track" event.
    video.srcObject = new MediaStream(pc.getReceivers().map(function (r) { return r.track; }));
    video.muted = true;
    video.play().catch(function () {});
    return new Promise(function (resolve, reject) {
      var timer = setTimeout(function () { reject(new Error("no frame")); }, FIRST_FRAME_MS);
      function frame() {
        if (video.camvoiceFrames++ === 0) {
          clearTimeout(timer);
          video.dataset.firstFrameMs = String(Math.round(performance.now() - sentAt));
          video.dataset.sinceLoadMs = String(Math.round(performance.now()));
          resolve(pc);
        }
        if (video.requestVideoFrameCallback) {
          video.requestVideoFrameCallback(frame);
        }
      }
      if (video.requestVideoFrameCallback) {
        video.requestVideoFrameCallback(frame);
      } else {
        video.addEventListener("loadeddata", frame, { once: true });
      }
      pc.addEventListener("connectionstatechange", function () {
        if (pc.connectionState === "failed" || pc.connectionState === "closed") {
          clearTimeout(timer);
          reject(new Error("connection " + pc.connectionState));
        }
      });
    });
  }

  // The label that says which path plays, in the page's language: its data-text-webrtc,
  // data-text-hls and data-text-ended.
  var TEXTS = { webrtc: "textWebrtc", hls: "textHls", ended: "textEnded" };
  function labeller(video) {
    var label = document.getElementById(video.dataset.label || "");
    return function (path) {
      if (label) {
        label.dataset.path = path;
        label.textContent = label.dataset[TEXTS[path]] || path;
      }
    };
  }

  // Once playing, a connection the engine tears down (signed out, camera blocked) says so; a
  // network blip ("disconnected", then "connected" again) says so only while it lasts.
  function watch(pc, say) {
    pc.addEventListener("connectionstatechange", function () {
      if (["failed", "closed", "disconnected"].indexOf(pc.connectionState) >= 0) {
        say("ended");
      } else if (pc.connectionState === "connected") {
        say("webrtc");
      }
    });
  }

  // Google's signaling protocol, which the console speaks too: JSON actions with the ticket.
  function signaling(video) {
    var url = video.dataset.signal;
    var headers = { "Authorization": "Bearer " + video.dataset.ticket,
      "Content-Type": "application/json" };
    function send(body, keepalive) {
      return fetch(url, { method: "POST", headers: headers, body: JSON.stringify(body),
        credentials: "omit", keepalive: keepalive });
    }
    return {
      offer: function (sdp) {
        return send({ action: "offer", deviceId: video.dataset.device, sdp: sdp }, false)
          .then(function (response) {
            if (!response.ok) {
              throw new Error("signaling answered HTTP " + response.status);
            }
            return response.json();
          })
          .then(function (body) {
            if (body.action !== "answer" || typeof body.sdp !== "string") {
              throw new Error("signaling sent no answer");
            }
            return body.sdp;
          });
      },
      end: function () {
        send({ action: "end", deviceId: video.dataset.device }, true).catch(function () {});
      },
    };
  }

  // <video data-signal data-ticket data-device [data-ice] [data-hls] data-label>: the console's
  // live view and the simulator's Google path.
  function signalled(video) {
    var say = labeller(video);
    var signal = signaling(video);
    var peer = null;
    offered(iceServers(video))
      .then(function (offer) {
        peer = offer.pc;
        video.dataset.gatherMs = String(Math.round(offer.gatherMs));
        var sentAt = performance.now();
        return signal.offer(offer.sdp).then(function (answer) {
          return peer.setRemoteDescription({ type: "answer", sdp: answer });
        }).then(function () { return play(peer, video, sentAt); });
      })
      .then(function (pc) {
        say("webrtc");
        watch(pc, say);
        window.addEventListener("pagehide", function () { signal.end(); pc.close(); });
      })
      .catch(function (error) {
        video.dataset.webrtcError = String(error && error.message || error);
        if (peer) {
          signal.end();
          peer.close();
        }
        video.srcObject = null;
        if (video.dataset.hls && window.camvoiceHls) {
          say("hls");
          window.camvoiceHls(video, video.dataset.hls);
        } else {
          say("ended");
        }
      });
  }

  // An Echo Show tells Alexa when its session's media flows and when it stops watching: the
  // simulator's page posts the same (with its form's CSRF token), and the directive goes out.
  function echoSays(video) {
    var token = document.querySelector("#simulate input[name=csrf_token]").value;
    return function (event, keepalive) {
      var data = new URLSearchParams({ csrf_token: token, camera: video.dataset.camera,
        session: video.dataset.session, event: event });
      fetch(video.dataset.sessionUrl, { method: "POST", body: data, credentials: "same-origin",
        keepalive: keepalive }).catch(function () {});
    };
  }

  // The simulator's Alexa path: the offer must exist before the directive is sent, so the form
  // goes with it (fetch, the page's own CSRF field), and the page's result replaces this one
  // while the peer connection lives on to play the answer it carries (video[data-answer]).
  function alexaOffer(event) {
    var form = event.target;
    if (form.id !== "simulate" || !window.RTCPeerConnection ||
        form.elements.assistant.value !== form.dataset.offerFor) {
      return;
    }
    event.preventDefault();
    var peer = null;
    var sentAt = 0;
    offered(iceServers(form))
      .then(function (offer) {
        peer = offer.pc;
        var data = new FormData(form);
        data.set("offer", offer.sdp);
        sentAt = performance.now();
        return fetch(form.action, { method: "POST", body: data, credentials: "same-origin" });
      })
      .then(function (response) { return response.text(); })
      .then(function (html) {
        var fresh = new DOMParser().parseFromString(html, "text/html").querySelector("main");
        document.querySelector("main").replaceWith(document.adoptNode(fresh));
        var video = document.querySelector("video[data-answer]");
        if (!video) {
          peer.close();
          return null;
        }
        var say = labeller(video);
        var tell = echoSays(video);
        return peer.setRemoteDescription({ type: "answer", sdp: video.dataset.answer })
          .then(function () { return play(peer, video, sentAt); })
          .then(function (pc) {
            say("webrtc");
            watch(pc, say);
            tell("connected", false);
            window.addEventListener("pagehide", function () {
              tell("disconnected", true);
              pc.close();
            });
          })
          .catch(function (error) {
            video.dataset.webrtcError = String(error && error.message || error);
            say("ended");
            peer.close();
          });
      })
      .catch(function () {
        if (peer) {
          peer.close();
        }
        form.submit(); // without WebRTC: the same form, as a plain post
      });
  }

  if (window.RTCPeerConnection) {
    document.querySelectorAll("video[data-signal]").forEach(signalled);
  } else {
    document.querySelectorAll("video[data-signal][data-hls]").forEach(function (video) {
      labeller(video)("hls");
      window.camvoiceHls(video, video.dataset.hls);
    });
  }
  document.addEventListener("submit", alexaOffer);
})();
