"""The real settings plus one trivial URL (bench/site_urls.py), for the benchmarks' gunicorn."""

from portraitstudio.settings import *  # noqa: F403

ROOT_URLCONF = "bench.site_urls"
