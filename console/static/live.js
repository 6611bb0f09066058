// Attach a <video> to its HLS stream: hls.js over Media Source Extensions where available (most
// browsers), else the browser's own HLS playback (Safari, iOS). webrtc.js calls it as fallback.
window.camvoiceHls = function (video, source) {
  if (window.Hls && Hls.isSupported()) {
    // A relay still starting answers 503 with Retry-After: 1. hls.js reads no Retry-After and
    // by default retries a failed playlist once: retry it every second for about 20 s instead.
    var retry = { maxNumRetry: 20, retryDelayMs: 1000, maxRetryDelayMs: 1000 };
    var policy = { default: { maxTimeToFirstByteMs: Infinity, maxLoadTimeMs: 20000,
      timeoutRetry: { maxNumRetry: 2, retryDelayMs: 0, maxRetryDelayMs: 0 }, errorRetry: retry } };
    var hls = new Hls({ lowLatencyMode: true, manifestLoadPolicy: policy,
      playlistLoadPolicy: policy });
    hls.loadSource(source);
    hls.attachMedia(video);
  } else {
    video.src = source;
  }
  video.muted = true;
  video.play().catch(function () {});
};

// Videos with HLS only; those that try WebRTC first are webrtc.js's.
document.querySelectorAll("video[data-hls]:not([data-signal])").forEach(function (video) {
  window.camvoiceHls(video, video.dataset.hls);
});

// A snapshot still being grabbed answers 503 with Retry-After: 2: load it again, a few times.
document.querySelectorAll("img.snapshot").forEach(function (img) {
  var tries = 0;
  var source = img.src;
  img.addEventListener("error", function () {
    if (tries++ < 10) {
      setTimeout(function () { img.src = source + "?try=" + tries; }, 2000);
    }
  });
});
