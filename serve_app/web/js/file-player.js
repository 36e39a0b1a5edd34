// Playback of the compressed formats (mp3, opus, aac, flac, wav) through an <audio> element, which
// decodes the container. It plays once the file has arrived: these formats are here to hear what the
// codec does; the live, lowest-latency path is PCM (pcm-player.js). Same surface as PcmPlayer.

export class FilePlayer {
  constructor(audio, contentType, onEnded = () => {}) {
    this.audio = audio;
    this.contentType = contentType || "application/octet-stream";
    this.onEnded = onEnded;
    this.chunks = [];
    this.playing = false;
    this.ended = false;
    this.stopped = false;
    this.duration = 0;
    this.url = null;
    this.audio.onplaying = () => {
      this.playing = true;
    };
    this.audio.onloadedmetadata = () => {
      this.duration = Number.isFinite(this.audio.duration) ? this.audio.duration : 0;
    };
    this.audio.onended = () => {
      this.ended = true;
      this.onEnded();
    };
  }

  push(bytes) {
    this.chunks.push(bytes);
  }

  finish() {
    if (this.stopped) return;
    this.url = URL.createObjectURL(new Blob(this.chunks, { type: this.contentType }));
    this.audio.src = this.url;
    this.audio.hidden = false;
    this.audio.play().catch(() => {
      // Autoplay refused (no gesture left): the controls are shown, the listener presses play.
    });
  }

  stop() {
    this.stopped = true;
    this.audio.pause();
  }

  /** Before the next utterance: silence this one and free its blob. */
  dispose() {
    this.stop();
    this.audio.removeAttribute("src");
    if (this.url) URL.revokeObjectURL(this.url);
  }

  get decodedSeconds() {
    return this.duration;
  }

  get position() {
    return this.audio.currentTime;
  }

  get gaps() {
    return 0;
  }

  get state() {
    if (this.ended) return "ended";
    if (this.stopped) return "stopped";
    return this.playing && !this.audio.paused ? "playing" : "buffering";
  }
}
