"""init_ray: join a cluster at an address, else start a small local Ray (never Ray's 30%-of-RAM object store)."""

from cnnlab.utils.ray_session import LOCAL_OBJECT_STORE, init_ray


class FakeRay:
    def __init__(self, running=False):
        self.running, self.calls = running, []

    def is_initialized(self):
        return self.running

    def init(self, **kwargs):
        self.calls.append(kwargs)
        self.running = True


def test_local_cluster_and_already_running(monkeypatch):
    monkeypatch.delenv("CNNLAB_RAY_OBJECT_STORE", raising=False)
    ray = FakeRay()
    assert init_ray(ray, None, 2) is True
    assert ray.calls[0]["num_cpus"] == 2 and ray.calls[0]["object_store_memory"] == LOCAL_OBJECT_STORE
    cluster = FakeRay()
    assert init_ray(cluster, "ray://head:10001", 2) is True
    assert cluster.calls == [{"address": "ray://head:10001", "log_to_driver": False}]  # the cluster's own sizing
    assert init_ray(FakeRay(running=True), None, 2) is False  # someone else's Ray: joined, not shut down later
    monkeypatch.setenv("CNNLAB_RAY_OBJECT_STORE", str(200 * 2**20))
    ray = FakeRay()
    init_ray(ray, None, None)
    assert ray.calls[0]["object_store_memory"] == 200 * 2**20
