"""`entitlements_client.django.requires` on tiny Django views (and on the package's example),
against the real server."""

import asyncio
import importlib.util
import json
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace

import pytest
from django.http import HttpResponse
from entitlements_client import AsyncClient, Client
from entitlements_client.django import requires

from catalog.models import Plan
from catalog.tests.factories import FeatureFactory, PlanEntitlementFactory

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "django_views.py"


def customer_of(request):
    return request.GET.get("customer")


@pytest.fixture
def configured(settings, server_url, api_key):
    settings.ENTITLEMENTS_CLIENT = {"base_url": server_url, "api_key": api_key, "backoff": 0.01}


def body(response) -> dict:
    return json.loads(response.content)


@requires("hd-video", customer=customer_of)
def watch(request):
    return HttpResponse(f"watching, source {request.entitlement.source}")


def test_the_view_runs_for_a_customer_who_may_use_the_feature(rf, configured, catalog):
    response = watch(rf.get("/watch?customer=acme"))
    assert (response.status_code, response.content) == (200, b"watching, source plan")


@pytest.mark.parametrize("query", ["?customer=walk-in", "?customer=nobody-we-know", ""])
def test_anyone_else_gets_a_403_no_access(rf, configured, catalog, query):
    response = watch(rf.get(f"/watch{query}"))

    assert response.status_code == 403
    assert body(response)["error"]["code"] == "no_access"
    assert body(response)["error"]["details"] == {"feature": "hd-video"}


def test_with_a_quantity_each_request_consumes_and_past_the_limit_is_denied(
    rf, server_url, api_key, catalog
):
    with Client(server_url, api_key) as client:

        @requires("transfer", customer=customer_of, client=client, quantity="4")
        def download(request):
            return HttpResponse(str(request.entitlement.balance))

        answers = [download(rf.get("/download?customer=acme")) for _ in range(3)]

        assert [a.status_code for a in answers] == [200, 200, 403]
        assert [answers[0].content, answers[1].content] == [b"6", b"2"]
        assert body(answers[2])["error"]["code"] == "limit_exceeded"
        assert client.check("acme", "transfer").usage == Decimal("8")


def test_with_the_server_stopped_fail_open_views_run_and_the_others_answer_unavailable(
    rf, stoppable_server, api_key, catalog
):
    stoppable_server.stop()
    with Client(
        stoppable_server.url, api_key, retries=1, backoff=0.01, fail_open=["hd-video"]
    ) as c:

        @requires("hd-video", customer=customer_of, client=c)
        def video(request):
            return HttpResponse(request.entitlement.reason)

        @requires("sso", customer=customer_of, client=c)
        def sso(request):  # pragma: no cover (denied)
            return HttpResponse("signed in")

        assert video(rf.get("/?customer=acme")).content == b"unavailable"
        denied = sso(rf.get("/?customer=acme"))
    assert denied.status_code == 403 and body(denied)["error"]["code"] == "unavailable"


def test_an_async_view_is_gated_by_an_async_client(rf, configured, catalog):
    @requires("seats", customer=customer_of)
    async def seats(request):
        return HttpResponse(request.entitlement.value)

    @requires("sso", customer=customer_of)
    async def sso(request):  # pragma: no cover (denied)
        return HttpResponse("signed in")

    assert asyncio.run(seats(rf.get("/?customer=acme"))).content == b"priority"
    assert asyncio.run(sso(rf.get("/?customer=acme"))).status_code == 403


def test_an_async_view_may_be_given_its_client(rf, server_url, api_key, catalog):
    async def story():
        async with AsyncClient(server_url, api_key) as client:

            @requires("transfer", customer=customer_of, client=client, quantity=Decimal("10"))
            async def big_download(request):
                return HttpResponse("ok")

            first = await big_download(rf.get("/?customer=acme"))
            second = await big_download(rf.get("/?customer=acme"))
            return first.status_code, second.status_code, body(second)["error"]["code"]

    assert asyncio.run(story()) == (200, 403, "limit_exceeded")


def test_the_example_views_work_as_the_readme_says(rf, configured, catalog):
    # Given the example's features on the customer's plan
    plan = Plan.objects.get(key="client-basic")
    PlanEntitlementFactory(
        plan=plan, feature=FeatureFactory(key="data-transfer", metered=True), limit=Decimal("1")
    )
    spec = importlib.util.spec_from_file_location("django_views_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    def as_user(path, account):
        request = rf.get(path)
        request.user = SimpleNamespace(account=account)
        return request

    acme = SimpleNamespace(external_id="acme")
    assert body(example.watch_in_hd(as_user("/", acme), video_id=7)) == {
        "video": 7,
        "quality": "1080p",
    }
    assert body(example.export(as_user("/", acme)))["gb_left"] == "0.5"
    assert body(example.export(as_user("/", acme)))["gb_left"] == "0"
    assert example.export(as_user("/", acme)).status_code == 403
    assert example.watch_in_hd(as_user("/", None), video_id=7).status_code == 403
