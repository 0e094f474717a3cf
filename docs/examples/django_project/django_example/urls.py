from django.urls import include, path

from django_example import views
from stepline.integrations import django as stepline_django

urlpatterns = [
    path("summarise", views.summarise),
    path("summarise-async", views.summarise_async),
    path("docs/<str:doc_id>/viewed", views.viewed),
    path("docs/<str:doc_id>/viewed-async", views.viewed_async),
    # POST /jobs/ {"name": "doc/summarise", "data": {...}}, GET /jobs/<id>?token=, GET /jobs/<id>/stream?token=
    # (csrf_exempt: the example's page sends no CSRF token; a real site keeps the check)
    path("jobs/", include(stepline_django.job_urls(events=["doc/summarise"], user_id=views.current_user, csrf_exempt=True))),
]
