"""The LiveKit voice agent runtime: ServeTTS plugin, sessions API client, lifecycle, workers.

Modules are small and import their heavy dependencies (livekit plugins, Ray) lazily, so the
package imports cleanly where only part of it is used (tests, the Serve replicas).
"""
