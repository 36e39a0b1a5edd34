"""Graceful drain of the Serve application: finish what is in flight, refuse what is new.

Ray 2.60 has no HTTP drain of its own for this case (see tests/integration/test_hardening_faults.py):
SIGTERM to `serve run` cuts streams within a second, and `serve.shutdown()`/`serve.delete()` stop
the proxy or the engines while answers are still being spoken. So the launcher
(`python -m serve_app.launch`) drains first and only then shuts Serve down:

- `DrainTally` (plain class, unit-tested without Ray) holds the `draining` flag and the in-flight
  count each ingress replica last reported, with the time of the report. A report also says whether
  the replica already knew about the drain when it counted: the drain is over only when every live
  replica has sent a fresh count (received after the drain began, at most two report periods ago)
  made with the flag set (a request it admitted just before seeing the flag is then in the count),
  and those counts are zero. A stale zero proves nothing (the replica may have admitted requests
  since and then gone quiet), so a quiet replica is waited for until its actor is gone (a replica
  reports its full id, which is its actor's name); what a dead replica had in flight died with it.
- `DrainCoordinator` is that tally in a named Ray actor (0 CPUs). The launcher creates it before
  deploying, so it lives exactly as long as the launcher's cluster; under plain `serve run` there is
  no coordinator and replicas never drain.
- The launcher also puts Serve's proxies in their draining state and waits for their ongoing
  requests (`drain_proxies`), so bytes a slow client has not read yet are not lost at shutdown.
- In each ingress replica, `InFlightCounter` (pure ASGI middleware) counts HTTP requests until their
  response, streamed body included, is finished, and `DrainWatcher` (a lifespan background task)
  reports that count every `REPORT_INTERVAL_S` and takes the flag back in the same actor call.
  While the flag is set, `/health/ready` answers 503 "draining" and new speech requests get 503
  "draining" with Retry-After; streams already running continue, on engines that stay up because
  nothing is stopped before the drain ends.

Modules: `coordinator` (the tally and its actor, shared by both sides), `launcher` (asks for the
drain and waits), `replica` (counts and reports, in each ingress replica).
"""
