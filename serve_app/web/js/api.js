// Every call to the service goes through here: the API key (typed once, kept in sessionStorage so it
// dies with the tab and is never written to disk) as a Bearer header, and the service's error shape
// `{"error": {"message", "type", "param", "code"}}` turned into an ApiError whose message is the
// API's own words.

const KEY_STORAGE = "voice-tts-serve.api-key";

export function getApiKey() {
  return sessionStorage.getItem(KEY_STORAGE) || "";
}

export function setApiKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(status, message, code = null, param = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.param = param;
  }
}

/** The ApiError for a failed response, with the API's message when the body has one. */
export async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // Not JSON (a proxy's page, a cut connection): fall back to the status line below.
  }
  const error = body && typeof body.error === "object" && body.error ? body.error : null;
  const message = error && error.message ? String(error.message) : `HTTP ${response.status} ${response.statusText}`.trim();
  return new ApiError(response.status, message, error?.code ?? null, error?.param ?? null);
}

/**
 * fetch() on the service with auth; throws ApiError unless the response is OK or its status is in
 * `allowStatuses` (health endpoints answer 503 with a report worth showing).
 */
export async function apiFetch(path, options = {}, allowStatuses = []) {
  const headers = new Headers(options.headers || {});
  const key = getApiKey();
  if (key) headers.set("Authorization", `Bearer ${key}`);
  const response = await fetch(path, { ...options, headers });
  if (!response.ok && !allowStatuses.includes(response.status)) throw await errorFrom(response);
  return response;
}

export async function apiJson(path, options = {}, allowStatuses = []) {
  return (await apiFetch(path, options, allowStatuses)).json();
}
