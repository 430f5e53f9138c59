"""Django's Redis cache, with a clear() that removes only this cache's keys.

With REDIS_URL set, one Redis database holds the cache and django-q2's job
queue side by side (and may be shared by other sites or test runs, told
apart by CACHE_KEY_PREFIX). Django's own RedisCache.clear() runs FLUSHDB,
which would drop queued jobs and everyone else's keys with the cache. Every
key Django writes is "<KEY_PREFIX>:<version>:<key>", so deleting what
matches "<KEY_PREFIX>:*" clears exactly this cache; django-q2's keys start
with "django_q:" and never match.
"""

from __future__ import annotations

from django.core.cache.backends.redis import RedisCache as DjangoRedisCache

_GLOB_SPECIAL = str.maketrans({c: f"\\{c}" for c in "*?[]\\"})


class RedisCache(DjangoRedisCache):
    def clear(self) -> bool:
        client = self._cache.get_client(write=True)
        pattern = self.key_prefix.translate(_GLOB_SPECIAL) + ":*"
        batch = []
        for key in client.scan_iter(match=pattern, count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.unlink(*batch)
                batch.clear()
        if batch:
            client.unlink(*batch)
        return True
