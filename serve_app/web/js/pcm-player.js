// Live playback of raw PCM (s16le mono) through the Web Audio API: each piece that arrives becomes an
// AudioBuffer scheduled right after the previous one, so sound starts with the first piece instead
// of after the whole answer (an <audio> element would wait for a container and buffer first).

const START_LEAD_S = 0.06; // scheduling slack for the first piece (and after a gap): no click, little delay

let sharedContext = null;

/**
 * The page's one AudioContext. Call it from a user gesture (the Speak click): browsers only let a
 * context start running there. Reusing one context avoids Chrome's limit on live contexts.
 */
export async function audioContext() {
  sharedContext ??= new AudioContext({ latencyHint: "interactive" });
  if (sharedContext.state !== "running") await sharedContext.resume();
  return sharedContext;
}

export class PcmPlayer {
  /** `onEnded` is called once the last scheduled piece has played after finish(). */
  constructor(context, sampleRate, onEnded = () => {}) {
    this.context = context;
    this.sampleRate = sampleRate;
    this.onEnded = onEnded;
    this.carry = null; // an odd byte left over: pieces may split a sample anywhere
    this.segments = []; // {at: context time, offset: stream seconds, duration}, for position()
    this.sources = new Set();
    this.nextTime = 0;
    this.samples = 0;
    this.gaps = 0;
    this.finished = false; // no more pieces will come
    this.ended = false; // ...and every piece has played
    this.stopped = false; // cut short by stop()
  }

  /** Schedule `bytes` (s16le) after what is already scheduled. */
  push(bytes) {
    if (this.stopped || this.ended || bytes.length === 0) return;
    if (this.carry) {
      const joined = new Uint8Array(this.carry.length + bytes.length);
      joined.set(this.carry);
      joined.set(bytes, this.carry.length);
      bytes = joined;
      this.carry = null;
    }
    const count = bytes.length >> 1;
    if (bytes.length & 1) this.carry = bytes.slice(bytes.length - 1);
    if (count === 0) return;
    const view = new DataView(bytes.buffer, bytes.byteOffset, count * 2);
    const floats = new Float32Array(count);
    for (let i = 0; i < count; i++) floats[i] = view.getInt16(i * 2, true) / 32768;
    const buffer = this.context.createBuffer(1, count, this.sampleRate);
    buffer.copyToChannel(floats, 0);
    this.schedule(buffer);
  }

  schedule(buffer) {
    const now = this.context.currentTime;
    if (this.nextTime < now) {
      // The network (or the engine) fell behind real time: restart a little ahead, and count it.
      if (this.segments.length) this.gaps += 1;
      this.nextTime = now + START_LEAD_S;
    }
    const source = this.context.createBufferSource();
    source.buffer = buffer;
    source.connect(this.context.destination);
    source.onended = () => {
      this.sources.delete(source);
      this.checkEnded();
    };
    source.start(this.nextTime);
    this.sources.add(source);
    this.segments.push({ at: this.nextTime, offset: this.samples / this.sampleRate, duration: buffer.duration });
    this.nextTime += buffer.duration;
    this.samples += buffer.length;
  }

  /** No more audio will come; onEnded fires when what is scheduled has played. */
  finish() {
    this.finished = true;
    this.checkEnded();
  }

  stop() {
    this.stopped = true;
    for (const source of this.sources) {
      source.onended = null;
      try {
        source.stop();
      } catch {
        // never started: nothing to stop
      }
    }
    this.sources.clear();
  }

  dispose() {
    this.stop();
  }

  checkEnded() {
    if (this.finished && !this.stopped && !this.ended && this.sources.size === 0) {
      this.ended = true;
      this.onEnded();
    }
  }

  get decodedSeconds() {
    return this.samples / this.sampleRate;
  }

  /** Seconds of the stream heard so far (the clock for word highlighting). */
  get position() {
    const now = this.context.currentTime;
    let heard = 0;
    for (const segment of this.segments) {
      if (segment.at > now) break;
      heard = segment.offset + Math.min(now - segment.at, segment.duration);
    }
    return heard;
  }

  /** "buffering" until the first piece sounds, then "playing", then "ended". */
  get state() {
    if (this.ended) return "ended";
    if (this.stopped) return "stopped";
    if (this.context.state === "running" && this.segments.length && this.context.currentTime >= this.segments[0].at) {
      return "playing";
    }
    return "buffering";
  }
}
