"""Perfect Corp v2 account calls against the emulator over 127.0.0.1: task deletion
(studio/vendor_deletion.py → PerfectCorpProvider.delete_remote) and the price list
(feature-cost → studio/costs.py → the studio page, Job.units, the staff console).

Tasks are made by the real adapter through the emulator's task store; a job counts
as v2 when it was submitted with PERFECTCORP_API_VERSION=v2 (job_create records it).
"""

# ruff: noqa: F811  (fixtures imported from tests.test_browser are used as arguments)

from __future__ import annotations

import math
import re
import time
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from django.contrib.auth.models import User
from django.core.cache import cache
from django.template.loader import render_to_string
from django.test import Client
from django.utils import timezone

from studio import costs, vendor_deletion
from studio.deletion import owner_delete_everything, photos_purge_expired, result_delete
from studio.jobs.create import job_create, job_create_batch
from studio.models import Job, VendorDeletion
from studio.operations import get_operation
from studio.ownership import Owner
from studio.photos import photo_create
from studio.vendors import base as vendor_base
from studio.vendors import perfectcorp_account as account
from studio.vendors.base import VendorError, get_provider
from studio.vendors.emulators.perfectcorp import SANDBOX_KEY
from studio.vendors.emulators.perfectcorp_account import SKUS
from tests.pc_support import job_input, new_emulator, routed, run
from tests.test_browser import browser, studio  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)
OWNER = Owner(visitor_id="visitor-pc-account")


@pytest.fixture
def emulator(settings):
    cache.clear()
    settings.PERFECTCORP_POLL_FLOOR_MS = 100
    settings.PERFECTCORP_POLL_CEILING_MS = 300
    settings.PERFECTCORP_API_VERSION = "v2"
    vendor_base._instances.pop("perfectcorp", None)
    emulator = new_emulator()
    with routed(emulator, over_http=True):
        yield emulator
    vendor_base._instances.pop("perfectcorp", None)


@pytest.fixture
def pc(emulator):
    provider = get_provider("perfectcorp")
    provider.sleep = lambda seconds: None
    return provider


@pytest.fixture
def photo(portrait_jpeg):
    return photo_create(owner=OWNER, data=portrait_jpeg, filename="me.jpg")


def _finished_task(pc, emulator, portrait_jpeg) -> str:
    """A task the adapter ran to the end in the emulator; returns its id."""
    job = job_input("pc_colorize", portrait_jpeg)
    run(pc, job, emulator)
    return job.state["task_id"]


def _job(task_id: str, **values) -> Job:
    """A finished Perfect Corp v2 job row (as job_create and the runner leave it)."""
    defaults = dict(
        owner_visitor=OWNER.visitor_id,
        operation="pc_hairstyle",
        provider="perfectcorp",
        status=Job.Status.SUCCEEDED,
        vendor_task_id=task_id,
        vendor_meta={account.API_MARK: "v2"},
    )
    return Job.objects.create(**{**defaults, **values})


def _later(minutes: float):
    return timezone.now() + timedelta(minutes=minutes)


# --- the delete call ----------------------------------------------------------------------


def test_delete_removes_a_finished_task_with_its_files_and_results(pc, emulator, portrait_jpeg):
    task_id = _finished_task(pc, emulator, portrait_jpeg)
    task = emulator.tasks[task_id]
    inputs = [i for ids in task.inputs.values() for i in ids]
    result_url, dst_id = task.results[0]["url"], task.results[0]["dst_id"]
    assert httpx.get(result_url).status_code == 200

    assert account.delete_task(pc, task_id) is True
    assert emulator.counters["tasks_deleted"] == 1 and emulator.deleted_tasks == [task_id]
    assert task_id not in emulator.tasks
    assert not any(i in emulator.files for i in [*inputs, dst_id])
    assert httpx.get(result_url).status_code == 403  # the result is gone from storage too
    # Asked again: Perfect Corp no longer knows it (InvalidTaskId), which counts as done.
    assert account.delete_task(pc, task_id) is False
    assert emulator.counters["tasks_deleted"] == 1
    sent = [path for method, path in emulator.log if path == "/s2s/v2.0/task/delete"]
    assert len(sent) == 2


def test_a_file_id_is_refused_for_good_and_a_missing_task_id_is_malformed(pc, emulator, portrait_jpeg):
    task_id = _finished_task(pc, emulator, portrait_jpeg)
    file_id = emulator.tasks[task_id].inputs["src_ids"][0]
    with pytest.raises(VendorError) as refused:
        account.delete_task(pc, file_id)
    assert refused.value.permanent and "does not accept" in refused.value.message
    with pytest.raises(VendorError) as malformed:
        account.delete_task(pc, "")
    assert malformed.value.permanent
    assert task_id in emulator.tasks and emulator.counters["tasks_deleted"] == 0


def test_a_task_still_running_is_asked_again_until_it_has_finished(pc, emulator, portrait_jpeg):
    emulator.engine_seconds = 3600.0  # the engine is still at work
    job = job_input("pc_colorize", portrait_jpeg)
    task_id = pc.submit(job).task_id
    vendor_deletion.deletions_request([_job(task_id)])  # the first attempt runs inline after the commit

    row = VendorDeletion.objects.get()
    assert row.status == "pending" and "still running" in row.last_error
    assert emulator.counters["delete_refused_running"] == 1 and task_id in emulator.tasks

    emulator.advance(3600)  # the engine has finished it
    assert vendor_deletion.deletions_process(now=_later(3)) == {"done": 1, "retry": 0, "failed": 0}
    row.refresh_from_db()
    assert row.status == "done" and row.attempts == 2 and row.snapshot == {}
    assert emulator.deleted_tasks == [task_id]


def test_a_task_perfect_corp_no_longer_has_counts_as_done(pc, emulator):
    vendor_deletion.deletions_request([_job("grH0CvsgXuAIHLUzD0V1Ol34hoet3R1tvdbtiVHrDb6_expired")])
    assert VendorDeletion.objects.get().status == "done"
    assert emulator.counters["tasks_deleted"] == 0


@pytest.mark.parametrize("shape", ["error", "error_code"])
def test_a_refused_api_key_is_retried_a_bounded_number_of_times(pc, emulator, portrait_jpeg, shape):
    task_id = _finished_task(pc, emulator, portrait_jpeg)
    emulator.faults["v2_401_shape"] = shape
    emulator.api_keys.discard(SANDBOX_KEY)  # the key was revoked
    vendor_deletion.deletions_request([_job(task_id)])
    minutes = 0
    for _ in range(vendor_deletion.MAX_ATTEMPTS + 3):
        vendor_deletion.deletions_process(now=_later(minutes))
        minutes += 24 * 60
    row = VendorDeletion.objects.get()
    assert row.status == "failed" and row.last_error == account.BAD_KEY
    assert emulator.counters["v2_auth_rejected"] == vendor_deletion.MAX_ATTEMPTS
    assert task_id in emulator.tasks and emulator.counters["tasks_deleted"] == 0


def test_v1_jobs_ask_nothing_and_the_privacy_page_says_which_vendors_delete(pc, emulator):
    before = emulator.counters["requests"]
    vendor_deletion.deletions_request([_job("v1-task", vendor_meta={account.API_MARK: "v1"})])
    assert VendorDeletion.objects.get().status == "done"
    assert emulator.counters["requests"] == before  # v1.0 has no delete call

    page = Client().get("/privacy/").content.decode()
    listed = page.split('data-testid="vendor-deletion"')[1].split("</ul>")[0]
    assert "<strong>Perfect Corp</strong>: with Perfect Corp&#x27;s current API (v2) we ask it to delete" in listed
    assert "older API (v1.0) cannot be deleted" in listed
    assert "<strong>WaveSpeed</strong>: WaveSpeed offers no deletion" in listed


def test_a_job_with_several_tasks_deletes_each_and_sandbox_and_live_tasks_stay_apart(
    pc, emulator, portrait_jpeg, settings
):
    first, second = _finished_task(pc, emulator, portrait_jpeg), _finished_task(pc, emulator, portrait_jpeg)
    job = _job(second, vendor_state={"task_id": second, "task_ids": [first, second]})
    assert account.job_task_ids(job) == [second, first]
    assert account.delete_job_tasks(pc, job) == 2
    assert sorted(emulator.deleted_tasks) == sorted([first, second])
    before = emulator.counters["requests"]
    # A sandbox job once sandbox mode is off: its task was the emulator's, nothing to ask.
    assert account.delete_job_tasks(pc, _job("emulated-task", sandbox=True)) == 0
    # A live job while sandbox mode is on: the live vendor is out of reach, so try later.
    settings.STUDIO_SANDBOX = True
    with pytest.raises(VendorError) as later:
        account.delete_job_tasks(pc, _job("live-task"))
    assert not later.value.permanent and emulator.counters["requests"] == before


def test_a_deletion_waits_behind_jobs_for_the_request_budget_and_is_tried_later(pc, emulator, settings):
    settings.PERFECTCORP_RATE_PER_TOKEN = settings.PERFECTCORP_RATE_PER_IP = 10
    settings.PERFECTCORP_V2_RATE_LIMIT = 10  # the v2 window (250 / 300 s by default)
    for _ in range(10):
        pc.budget().take(urgent=True)  # running jobs used the whole window
    started = time.monotonic()
    with pytest.raises(VendorError) as later:
        account.delete_task(pc, "some-task")
    assert not later.value.permanent and "budget" in later.value.message
    assert time.monotonic() - started < account.BUDGET_WAIT_S + 1  # gave up soon, not after the window
    assert emulator.counters["requests"] == 0


# --- deleting work deletes the v2 tasks --------------------------------------------------------


def test_delete_everything_deletes_the_jobs_v2_tasks_in_the_emulator(emulator, photo):
    # Operations without parameters, so the test reads the same whichever adapter runs v2 jobs.
    runs = [(get_operation("pc_colorize"), {}), (get_operation("pc_background_removal"), {})]
    jobs = job_create_batch(owner=OWNER, photo=photo, runs=runs)
    jobs.append(job_create(owner=OWNER, photo=photo, operation=get_operation("pc_colorize"), params={}))
    task_ids = []
    for job in jobs:
        job.refresh_from_db()
        assert job.status == Job.Status.SUCCEEDED, job.error_message
        assert job.vendor_meta[account.API_MARK] == "v2"
        task_ids.append(job.vendor_task_id)
    assert all(t in emulator.tasks for t in task_ids)

    owner_delete_everything(owner=OWNER)  # the deletion task runs inline after the commit

    assert emulator.counters["tasks_deleted"] == 3 and sorted(emulator.deleted_tasks) == sorted(task_ids)
    assert not any(t in emulator.tasks for t in task_ids)
    assert list(VendorDeletion.objects.values_list("status", flat=True)) == ["done"] * 3
    assert vendor_deletion.deletions_summary() == {"perfectcorp": {"pending": 0, "done": 3, "failed": 0}}


def test_deleting_a_result_and_the_retention_purge_delete_their_tasks(emulator, photo, portrait_jpeg):
    job = job_create(owner=OWNER, photo=photo, operation=get_operation("pc_background_removal"), params={})
    job.refresh_from_db()
    result_delete(result=job.results.get())
    assert emulator.deleted_tasks == [job.vendor_task_id]

    other = photo_create(owner=OWNER, data=portrait_jpeg, filename="again.jpg")
    purged = job_create(owner=OWNER, photo=other, operation=get_operation("pc_colorize"), params={})
    purged.refresh_from_db()
    assert photos_purge_expired(now=timezone.now() + timedelta(days=30)) >= 1
    assert emulator.deleted_tasks == [job.vendor_task_id, purged.vendor_task_id]


# --- the price list --------------------------------------------------------------------------------


def test_feature_cost_is_read_page_by_page(pc, emulator):
    skus = account.feature_costs(pc, page_size=5)
    assert len(skus) == len(SKUS) and emulator.counters["feature_cost_pages"] == math.ceil(len(SKUS) / 5)
    assert {s["path"] for s in skus} >= {"/s2s/v2.1/task/hair-transfer", "/s2s/v2.0/task/sod"}
    assert account.feature_costs(pc) == skus  # 20 a page: two pages
    assert emulator.counters["feature_cost_pages"] == math.ceil(len(SKUS) / 5) + 2

    v2 = account.operation_units(skus, "v2")
    assert v2["pc_hairstyle"] == 2 and v2["pc_hair_extension"] == 1 and v2["pc_hair_volume"] == 2
    assert v2["pc_object_removal"] == 2 and v2["pc_background_removal"] == 1
    assert "pc_wig" not in v2  # no SKU for wig: no price is shown rather than a guess
    v1 = account.operation_units(skus, "v1")
    assert v1["pc_hairstyle"] == 1 and "pc_object_removal" not in v1


def test_unit_costs_are_kept_in_the_cache_and_read_again_when_stale(pc, emulator, settings):
    op = get_operation("pc_hairstyle")
    assert costs.unit_cost(op) is None  # nothing kept yet: a refresh is queued (inline here)
    pages = emulator.counters["feature_cost_pages"]
    assert pages == 2 and costs.unit_cost(op) == Decimal("2")
    for _ in range(5):
        assert costs.unit_cost(op) == Decimal("2")
    assert emulator.counters["feature_cost_pages"] == pages  # read from the cache only

    # A day later the copy is stale: still shown, and one refresh is queued.
    kept = cache.get(costs.CACHE_KEY)
    kept["perfectcorp"]["at"] = (timezone.now() - timedelta(days=2)).isoformat()
    cache.set(costs.CACHE_KEY, kept)
    cache.delete(costs.ASKED_KEY)
    assert costs.unit_cost(op) == Decimal("2")
    assert emulator.counters["feature_cost_pages"] == pages + 2

    # Prices read for v2 are not shown for v1 (another hairstyle engine).
    settings.PERFECTCORP_API_VERSION = "v1"
    cache.delete(costs.ASKED_KEY)
    assert costs.unit_cost(op) is None
    assert costs.unit_cost(op) == Decimal("1")


def test_the_daily_refresh_is_scheduled():
    from django_q.models import Schedule

    schedule = Schedule.objects.get(name="refresh-unit-costs")
    assert schedule.func == "studio.tasks.refresh_unit_costs" and schedule.schedule_type == Schedule.DAILY


def test_the_studio_shows_the_unit_cost_before_submit_and_the_batch_total(pc, emulator):
    costs.unit_costs_refresh()
    page = Client().get("/?operation=pc_hairstyle").content.decode()
    note = page.split('data-testid="cost-note"')[1].split("</p>")[0]
    assert "Costs <strong>2 Perfect Corp units</strong> per run." in note
    assert "1 run (one per style you pick): 2 units in all." in note

    # Three styles picked (the form as re-rendered after a refused submit): the batch total.
    op = get_operation("pc_hairstyle")
    html = render_to_string(
        "studio/partials/cost_note.html",
        {"op": op, "provider": pc, "values": {"style_id": ["1", "2", "3"]}},
    )
    assert "3 runs (one per style you pick): 6 units in all." in html
    # A local operation has no price.
    assert 'data-testid="cost-note"' not in Client().get("/?operation=studio_retouch").content.decode()


def test_the_vendor_panel_says_when_the_prices_were_read(pc, emulator):
    costs.unit_costs_refresh()
    staff = Client()
    staff.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw-ops-123456"))
    page = staff.get("/staff/vendors/").content.decode()
    shown = page.split('data-testid="vendor-prices">')[1].split("</dd>")[0]
    read = r"read (now|a second ago|\d+ seconds ago)"
    assert re.fullmatch(rf"11 operations priced, {read} \(sandbox:perfectcorp_api=v2\)", shown), shown


def test_a_job_records_the_units_it_was_quoted(emulator, photo):
    costs.unit_costs_refresh()
    job = job_create(owner=OWNER, photo=photo, operation=get_operation("pc_colorize"), params={})
    job.refresh_from_db()
    assert job.units == Decimal("2") and job.status == Job.Status.SUCCEEDED
    local = job_create(
        owner=OWNER, photo=photo, operation=get_operation("studio_retouch"), params={"strength": 0.3}
    )
    assert local.units is None


def test_the_console_totals_units_per_day_and_per_provider():
    staff = Client()
    staff.force_login(User.objects.create_superuser("ops", "ops@example.com", "pw-ops-123456"))
    now = timezone.now().replace(hour=12, minute=0, second=0, microsecond=0)
    yesterday = now - timedelta(days=1)
    for created, status, units in [
        (now, "succeeded", "2"),
        (now, "succeeded", "1"),
        (now, "failed", "2"),  # not charged: Perfect Corp bills a task that succeeded
        (yesterday, "succeeded", "2"),
    ]:
        Job.objects.create(
            owner_visitor="v" * 32,
            operation="pc_hairstyle",
            provider="perfectcorp",
            status=status,
            units=Decimal(units),
            created_at=created,
        )
    Job.objects.create(owner_visitor="v" * 32, operation="studio_retouch", provider="local", status="succeeded")

    response = staff.get("/staff/?period=7")
    context = response.context
    assert context["totals"]["units"] == Decimal("5")
    per_day = {row["day"]: row["units"] for row in context["per_day"]}
    assert per_day[now.date()] == Decimal("3") and per_day[yesterday.date()] == Decimal("2")
    per_provider = {row["provider"]: row["units"] for row in context["per_provider"]}
    assert per_provider == {"perfectcorp": Decimal("5"), "local": None}
    html = response.content.decode()
    assert '<strong data-testid="total-units">5</strong>' in html
    assert '<td data-testid="day-units">3</td>' in html and '<td data-testid="day-units">2</td>' in html


# --- in the browser ----------------------------------------------------------------------------


@pytest.mark.browser
def test_the_batch_total_follows_the_styles_picked_in_the_browser(studio, settings):
    """Sandbox mode in real Chromium: the cost note under the form, and app.js keeping its total."""
    from playwright.sync_api import expect

    from studio import styles
    from studio.vendors import sandbox

    settings.STUDIO_SANDBOX = True
    settings.PERFECTCORP_API_VERSION = "v2"  # hairstyle on v2.1: 2 units a run (v1's engine: 1)
    sandbox.reset()
    try:
        (report,) = styles.styles_sync(feature="hair-style")
        assert not report.error, report
        costs.unit_costs_refresh()  # as the daily task does, from the sandbox emulator
        page, _guard = studio.page()
        page.goto("/?operation=pc_hairstyle")
        note = page.get_by_test_id("cost-note")
        expect(note).to_contain_text("At Perfect Corp this costs 2 units per run; in sandbox mode nothing is charged.")
        expect(note.get_by_test_id("cost-total")).to_have_text("1 run (one per style you pick): 2 units in all.")
        cards = page.get_by_test_id("style-picker-style_id").locator(".style-card")
        for index in (0, 1, 2):
            cards.nth(index).click()
        expect(note.get_by_test_id("cost-total")).to_have_text("3 runs (one per style you pick): 6 units in all.")
        cards.nth(1).click()  # unpicked again
        expect(note.get_by_test_id("cost-total")).to_have_text("2 runs (one per style you pick): 4 units in all.")
    finally:
        sandbox.reset()
