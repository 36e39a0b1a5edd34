// A reference clip recorded in the browser with MediaRecorder. The browser picks the container
// (WebM/Opus in Chromium and Firefox, MP4 in Safari); the server decodes any of them with PyAV.

const PREFERRED_TYPES = ["audio/webm;codecs=opus", "audio/ogg;codecs=opus", "audio/mp4"];

/** Why recording cannot work here, or null. Browsers offer the microphone to secure origins only. */
export function recordingUnavailableReason() {
  if (!window.isSecureContext) return "Recording needs HTTPS or localhost; upload a file instead.";
  if (!navigator.mediaDevices?.getUserMedia || typeof MediaRecorder === "undefined") {
    return "This browser cannot record audio; upload a file instead.";
  }
  return null;
}

export class ClipRecorder {
  async start() {
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    const mimeType = PREFERRED_TYPES.find((type) => MediaRecorder.isTypeSupported(type));
    this.recorder = new MediaRecorder(this.stream, mimeType ? { mimeType } : {});
    this.chunks = [];
    this.recorder.ondataavailable = (event) => {
      if (event.data.size) this.chunks.push(event.data);
    };
    this.startedAt = performance.now();
    this.recorder.start(250); // a piece every 250 ms: a cut-short recording still has its audio
  }

  get seconds() {
    return this.startedAt ? (performance.now() - this.startedAt) / 1000 : 0;
  }

  /** Stop and resolve to the recorded clip (a Blob), releasing the microphone. */
  stop() {
    return new Promise((resolve) => {
      this.recorder.onstop = () => {
        for (const track of this.stream.getTracks()) track.stop();
        this.startedAt = null;
        resolve(new Blob(this.chunks, { type: this.recorder.mimeType || "audio/webm" }));
      };
      this.recorder.stop();
    });
  }
}

/** A file name whose extension matches the clip's container, for the multipart upload. */
export function clipFileName(blob) {
  const type = blob.type || "";
  if (type.includes("ogg")) return "recording.ogg";
  if (type.includes("mp4")) return "recording.m4a";
  return "recording.webm";
}
