// The words being spoken, highlighted as they are heard. Word events carry start/end times from the
// start of the answer's audio; the player's position is on the same clock, so the current word is
// the last one whose start has been heard.

export class WordTrack {
  constructor(container) {
    this.container = container;
    this.words = []; // {start, end, node}, in arrival order (the server sends them in time order)
    this.current = -1;
  }

  /** Show `text` as it was sent, for streams without word timestamps. */
  showText(text) {
    this.reset();
    this.container.textContent = text;
    this.container.dataset.timed = "false";
  }

  reset() {
    this.words = [];
    this.current = -1;
    this.container.replaceChildren();
    this.container.dataset.timed = "true";
  }

  add(word, start, end) {
    const node = document.createElement("span");
    node.className = "word";
    node.textContent = word;
    this.container.append(node, " ");
    this.words.push({ start, end, node });
  }

  get count() {
    return this.words.length;
  }

  /** Move the highlight to `position` seconds; cheap when called every frame (moves forward only). */
  highlight(position) {
    let index = this.current;
    while (index + 1 < this.words.length && this.words[index + 1].start <= position) index += 1;
    if (index === this.current) return;
    for (let i = Math.max(0, this.current); i <= index; i++) this.words[i].node.classList.add("spoken");
    this.words[this.current]?.node.classList.remove("current");
    this.words[index].node.classList.add("current");
    this.current = index;
  }

  /** Playback over: everything was heard. */
  finish() {
    this.highlight(Number.POSITIVE_INFINITY);
    this.words[this.current]?.node.classList.remove("current");
  }
}
