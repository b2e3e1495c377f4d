"""A Django app gated by the entitlements platform (see the README's "Django").

settings.py:

    ENTITLEMENTS_CLIENT = {
        "base_url": "http://127.0.0.1:8000",
        "api_key": os.environ["ENTITLEMENTS_API_KEY"],  # a runtime key
        "fail_open": ["hd-video"],  # an outage must not stop playback; exports stay gated
    }

urls.py:

    path("videos/<int:video_id>/hd", views.watch_in_hd),
    path("exports", views.export),
"""

from django.http import HttpRequest, JsonResponse
from entitlements_client.django import requires


def customer_of(request: HttpRequest) -> str | None:
    """Your app's own link from the signed-in user to the customer's external_id."""
    account = getattr(request.user, "account", None)
    return account.external_id if account else None


@requires("hd-video", customer=customer_of)
def watch_in_hd(request: HttpRequest, video_id: int) -> JsonResponse:
    return JsonResponse({"video": video_id, "quality": "1080p"})


@requires("data-transfer", customer=customer_of, quantity="0.5")
def export(request: HttpRequest) -> JsonResponse:
    # Each export consumes 0.5 GB, counted once even when the client retries; past a hard
    # limit the user gets a 403 {"error": {"code": "limit_exceeded", ...}} instead.
    left = request.entitlement.balance  # what is left after this export
    return JsonResponse({"export": "started", "gb_left": str(left)})
