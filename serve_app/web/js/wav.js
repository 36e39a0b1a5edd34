// A WAV file from the PCM the page received (s16le mono), for the download button: the bytes that
// were played, not a second request.

export function wavBlob(chunks, sampleRate) {
  const dataBytes = chunks.reduce((total, chunk) => total + chunk.length, 0) & ~1;
  const header = new DataView(new ArrayBuffer(44));
  const ascii = (offset, text) => [...text].forEach((c, i) => header.setUint8(offset + i, c.charCodeAt(0)));
  ascii(0, "RIFF");
  header.setUint32(4, 36 + dataBytes, true);
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  header.setUint32(16, 16, true); // fmt chunk size
  header.setUint16(20, 1, true); // PCM
  header.setUint16(22, 1, true); // mono
  header.setUint32(24, sampleRate, true);
  header.setUint32(28, sampleRate * 2, true); // bytes per second
  header.setUint16(32, 2, true); // block align
  header.setUint16(34, 16, true); // bits per sample
  ascii(36, "data");
  header.setUint32(40, dataBytes, true);
  // An odd trailing byte (a cut stream) is dropped so the file stays whole samples.
  const parts = [...chunks];
  const total = chunks.reduce((t, c) => t + c.length, 0);
  if (total !== dataBytes) parts[parts.length - 1] = parts[parts.length - 1].subarray(0, -1);
  return new Blob([header, ...parts], { type: "audio/wav" });
}

/** Offer `blob` as a file download. */
export function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  // The click has handed the blob to the download manager; free it after the current task.
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
