// Test double, injected before the page's scripts: a server that speaks the SSE stream of issue 13.
// The request still goes to the real service (plain chunked PCM); each piece that arrives is handed
// on as a `speech.audio.delta` event, with `speech.word` events (one word every 0.25 s of audio)
// and a closing `speech.audio.done`. Events are cut in the middle across reads, with CRLF endings
// and a comment line, so the page's parser meets what a real network delivers.
(() => {
  const realFetch = window.fetch.bind(window);
  const encoder = new TextEncoder();
  const WORD_S = 0.25;
  window.__sseShim = { requests: 0 };

  const base64 = (bytes) => {
    let text = "";
    for (let i = 0; i < bytes.length; i++) text += String.fromCharCode(bytes[i]);
    return btoa(text);
  };
  const event = (data, eol = "\n") => `data: ${JSON.stringify(data)}${eol}${eol}`;

  window.fetch = async (input, init = {}) => {
    const url = typeof input === "string" ? input : input.url;
    if (!url.endsWith("/v1/audio/speech") || typeof init.body !== "string") return realFetch(input, init);
    const body = JSON.parse(init.body);
    if (body.stream_format !== "sse") return realFetch(input, init);
    window.__sseShim.requests += 1;
    const words = body.input.split(/\s+/).filter(Boolean);
    const plain = { ...body, response_format: "pcm" };
    delete plain.stream_format;
    delete plain.timestamps;
    const response = await realFetch(input, { ...init, body: JSON.stringify(plain) });
    if (!response.ok) return response;
    const rate = Number(response.headers.get("X-Sample-Rate")) || 24000;
    const reader = response.body.getReader();
    let bytes = 0;
    let next = 0;
    const stream = new ReadableStream({
      start(controller) {
        controller.enqueue(encoder.encode(": stream opened\r\n\r\n"));
      },
      async pull(controller) {
        const { value, done } = await reader.read();
        if (done) {
          const usage = { input_tokens: body.input.length, output_tokens: bytes / 2, total_tokens: body.input.length + bytes / 2 };
          controller.enqueue(encoder.encode(event({ type: "speech.audio.done", usage })));
          controller.close();
          return;
        }
        bytes += value.length;
        let text = event({ type: "speech.audio.delta", audio: base64(value) }, "\r\n");
        while (next < words.length && next * WORD_S < bytes / 2 / rate) {
          text += event({ type: "speech.word", word: words[next], start_s: next * WORD_S, end_s: (next + 1) * WORD_S });
          next += 1;
        }
        const encoded = encoder.encode(text);
        const cut = Math.floor(encoded.length / 2);
        controller.enqueue(encoded.subarray(0, cut));
        controller.enqueue(encoded.subarray(cut));
      },
      cancel() {
        reader.cancel();
      },
    });
    const headers = { "Content-Type": "text/event-stream", "X-Sample-Rate": String(rate) };
    headers["X-TTS-Engine"] = response.headers.get("X-TTS-Engine") || "";
    return new Response(stream, { status: 200, headers });
  };
})();
