"""Delivery by Celery workers (the ``celery`` extra; README "Workers").

With ``queue.broker_url`` set, the scheduler (the daemon, or ``run --once``) plans as always and
then, instead of sending, hands each due issue's id to the broker
(:mod:`~newsletter.workers.enqueue`); ``newsletter worker`` processes, on this machine or
others, render and send one issue per task (:mod:`~newsletter.workers.deliver`,
:mod:`~newsletter.workers.process`). Exactly-once rests on the database, shared by all:
the issue's state, its per-issue lock and the attempt count, never on the broker
(:mod:`~newsletter.workers.broker` says how Celery is set up around that).
"""
