from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The landing page after login: links to what this user's roles may open."""
    return render(request, "home.html")


def healthz(request: HttpRequest) -> JsonResponse:
    """Process alive; touches nothing else (the benchmark's floor)."""
    return JsonResponse({"status": "ok"})
