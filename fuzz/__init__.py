"""The adversarial campaign (``make fuzz``): real relays, Redis and a recording upstream.

Not product code: nothing under ``mterelay/`` imports it.  The campaign
starts every process itself on 127.0.0.1 (:mod:`fuzz.stack`), sends
malformed inputs built by mutating valid ones (:mod:`fuzz.cases`), runs the
targeted attacks of issue 14 (:mod:`fuzz.attacks`) and writes a report
(:mod:`fuzz.report`).  ``python -m fuzz --help`` for the options.
"""
