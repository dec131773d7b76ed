from django.urls import include, path

from . import views

api = [path("items/<int:item_id>", views.item), path("async/<slug:name>", views.async_view)]

urlpatterns = [
    path("", views.index),
    path("healthz", views.index),
    path("api/v1/", include(api)),
    path("boom", views.boom),
    path("stream", views.stream),
    path("astream", views.astream),
]
