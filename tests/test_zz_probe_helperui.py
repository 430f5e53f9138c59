from tests.test_browser_headshots import *  # noqa
from tests.test_browser_headshots import browser, portrait_file, shots_dir, studio, sandbox_cluster, templates, slide  # noqa
from pathlib import Path

OUT = Path("/tmp/helper_ui")


def test_probe(studio, sandbox_cluster, templates, portrait_file):
    page, guard = studio.page()
    upload_photo(page, portrait_file)
    choose_operation(page, "AI headshot")
    page.get_by_test_id("template-card").filter(has_text="Corporate").click()
    page.get_by_test_id("template-card").filter(has_text="LinkedIn").click()
    page.locator("details.compare-with summary").click()
    page.get_by_label("1:1 (768×768)").check()
    page.locator(".panel-operation").screenshot(path=OUT / "form.png", caret="initial")
    submit_job(page)
    page.get_by_test_id("batch-note").get_by_role("link").click()
    for column in page.get_by_test_id("compare-column").all():
        wait_column(column)
    wait_images(page)
    page.screenshot(path=OUT / "compare.png", full_page=True, caret="initial")
    r = Result.objects.first()
    Result.objects.filter(pk=r.pk).update(meta={**r.meta, "nsfw": True})
    page.goto(f"/results/{r.pk}/")
    page.screenshot(path=OUT / "result_nsfw.png", full_page=True, caret="initial")
    page.goto(f"/gallery/")
    page.screenshot(path=OUT / "gallery.png", full_page=True, caret="initial")
    mobile, g2 = studio.page(**{"viewport": {"width": 375, "height": 812}})
    mobile.context.add_cookies(page.context.cookies())
    mobile.goto(page.url.replace("/gallery/", f"/compare/{r.job.batch}/"))
    mobile.screenshot(path=OUT / "compare_mobile.png", full_page=True, caret="initial")
    guard.problems.clear()
    g2.problems.clear()
