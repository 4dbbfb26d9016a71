from django.urls import path

from apps.notes import views

urlpatterns = [path("live/", views.live, name="notes-live")]
