// Attach every <video data-hls="..."> to its HLS stream: hls.js over Media Source Extensions
// where available (most browsers), else the browser's own HLS playback (Safari, iOS).
document.querySelectorAll("video[data-hls]").forEach(function (video) {
  var source = video.dataset.hls;
  if (window.Hls && Hls.isSupported()) {
    var hls = new Hls({ lowLatencyMode: true });
    hls.loadSource(source);
    hls.attachMedia(video);
  } else {
    video.src = source;
  }
  video.muted = true;
  video.play().catch(function () {});
});
