"""How jobs arrive: a bulk sweep of a prefix, S3 event notifications through SQS, and a webhook -- three front ends
over one small protocol, :class:`~worker.triggers.mapping.Submitter` (the service object satisfies it).

    report = bulk(service, "s3://scans/reels/", "s3://colorized/reels/", JobOptions(), dry_run=True)
    counts = listen_sqs(service, "sqs://tinct-events", "s3://colorized/", JobOptions(), stop=stop_event)
    server, thread = serve_webhook(service, "0.0.0.0", 8080, secret, "s3://colorized/", JobOptions())

The modules, one room each:

- :mod:`worker.triggers.mapping`: what every trigger shares -- the Submitter protocol, which objects a trigger takes
  (:func:`eligibility`) and the job each becomes (:func:`output_uri_for`, :func:`job_spec_for`).
- :mod:`worker.triggers.sidecars`: a photo's ``<name>.hints.json`` and a film's ``<name>.references/`` pictures, put
  into the job's options (:func:`with_sidecars`).
- :mod:`worker.triggers.bulk`: ``tinct bulk``, listing a prefix and submitting in batches (:func:`bulk`).
- :mod:`worker.triggers.events`: S3 event notifications parsed and submitted (:func:`parse_s3_events`,
  :func:`submit_events`), the one path both event triggers take.
- :mod:`worker.triggers.sqs`: ``tinct listen``, long-polling an SQS queue of events (:func:`listen_sqs`).
- :mod:`worker.triggers.webhook`: ``tinct webhook``, an HTTP endpoint for MinIO or any relay (:func:`serve_webhook`).

All of them map an object to its job the same way and never take their own outputs (``mapping``), so the same
object reached by a sweep, a redelivered SQS message and a webhook retry is one job; all send a photo or film with
its sidecars, and never take a sidecar as an input (``sidecars``).

Failures follow :mod:`worker.errors`: a permanently bad key or message is reported (and an SQS message deleted) with
its reason; a transient one (Redis or S3 hiccup) is left for the sender to redeliver -- the SQS message stays on the
queue, the webhook answers 503 -- and a bulk run stops early with a report that says a rerun resumes.
"""
