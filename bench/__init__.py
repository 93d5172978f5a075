"""Benchmarks of the reservation worker against baselines measured in the same run.

`python -m bench [--smoke] [--only NAME ...]` starts the real stack (or uses
DATABASE_URL / KAFKA_BOOTSTRAP_SERVERS), runs each stage in a fresh database
and fresh topics, and writes JSON and PNG charts to bench-results/. The
service is driven only through its public surfaces: the commands topic, the
receiver's HTTP endpoint, `python -m worker <role>` processes and the
database tables. After the stages, three curves (curve_*) sweep a knob:
the consumer's batch size, the admissions already in the tables, the
offered rate (`--no-curves` leaves them out).
"""
