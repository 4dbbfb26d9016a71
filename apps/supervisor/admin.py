"""The supervisor UI: apps with a status badge per environment, and the Environments tab.

Thin: every write goes through services; the list's query count is constant (prefetch).
"""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from apps.supervisor import live, selectors, services
from apps.supervisor.models import Application, Deployment, Environment
from apps.supervisor.statuses import DISPLAY_STATUSES, UNKNOWN, EnvStatus

admin.site.site_header = "App Supervisor"
admin.site.site_title = "App Supervisor"
admin.site.index_title = "Applications and environments"


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [(s, s) for s in DISPLAY_STATUSES if s != "commanding"]

    def queryset(self, request, queryset):
        value = self.value()
        if not value:
            return queryset
        # EXISTS, not a join + DISTINCT: with 10,000 apps the DISTINCT count took 350 ms.
        shown = Deployment.objects.filter(application=OuterRef("pk"))
        if value == UNKNOWN:
            return queryset.filter(Exists(shown.filter(environment__status=EnvStatus.OFFLINE)))
        # A deployment shows its stored status unless its environment is offline (`unknown`).
        return queryset.filter(
            Exists(shown.filter(status=value).exclude(environment__status=EnvStatus.OFFLINE))
        )


class EnvironmentFilter(admin.SimpleListFilter):
    title = "environment"
    parameter_name = "environment"

    def lookups(self, request, model_admin):
        return [(n, n) for n in Environment.objects.values_list("name", flat=True)]

    def queryset(self, request, queryset):
        if self.value():
            there = Deployment.objects.filter(
                application=OuterRef("pk"), environment__name=self.value()
            )
            return queryset.filter(Exists(there))
        return queryset


class ApplicationForm(forms.ModelForm):
    run_on = forms.ModelMultipleChoiceField(
        label="Environments",
        queryset=Environment.objects.all(),
        to_field_name="name",
        widget=forms.CheckboxSelectMultiple,
        help_text="Where the app runs. Several environments start one at a time, in name order.",
    )

    class Meta:
        model = Application
        fields = [
            "name",
            "title",
            "icon",
            "pinned",
            "custom_domain",
            "start_mode",
            "db_type",
            "db_host",
            "db_port",
            "db_user",
            "db_password",
            "db_database",
            "options",
        ]
        widgets = {"db_password": forms.PasswordInput(render_value=True)}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["run_on"].initial = [
                d.environment.name for d in self.instance.deployments.select_related("environment")
            ]
        else:
            names = list(Environment.objects.values_list("name", flat=True)[:2])
            if len(names) == 1:
                self.fields["run_on"].initial = names
            if selectors.default_db_server() is not None:
                self.fields["db_type"].initial = "new_database"

    def clean_custom_domain(self):
        return (self.cleaned_data.get("custom_domain") or "").strip().lower() or None


@admin.register(Application)
class ApplicationAdmin(admin.ModelAdmin):
    form = ApplicationForm
    list_display = ["name", "title_display", "statuses", "start_mode", "db_type", "visit"]
    list_filter = [StatusFilter, EnvironmentFilter, "start_mode", "db_type", "pinned"]
    search_fields = ["name", "title", "custom_domain"]
    list_per_page = 100
    actions = ["start_apps", "stop_apps", "restart_apps", "delete_apps", "delete_apps_with_data"]
    readonly_fields = ["status_detail", "history"]

    class Media:
        js = ["supervisor/live.js"]

    fieldsets = [
        (
            None,
            {
                "fields": [
                    "name",
                    "title",
                    "icon",
                    "pinned",
                    "custom_domain",
                    "start_mode",
                    "run_on",
                ]
            },
        ),
        (
            "Database",
            {"fields": ["db_type", "db_host", "db_port", "db_user", "db_password", "db_database"]},
        ),
        ("Options", {"fields": ["options"], "classes": ["collapse"]}),
        ("Status", {"fields": ["status_detail"]}),
        ("History", {"fields": ["history"]}),
    ]

    def get_queryset(self, request):
        return selectors.application_list_with_status()

    def get_readonly_fields(self, request, obj=None):
        if obj is not None:
            return ["name", *self.readonly_fields]
        return []

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.fieldsets[:-2]
        return self.fieldsets

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # it would delete rows without stopping apps
        return actions

    # --- columns ------------------------------------------------------------------------
    @admin.display(description="title", ordering="title")
    def title_display(self, obj: Application):
        return f"{obj.icon} {obj.title}".strip()

    @admin.display(description="environments")
    def statuses(self, obj: Application):
        return format_html_join(
            " ",
            '<span class="app-env" data-deployment="{}">{}: '
            '<span class="app-status app-status-{}">{}</span>'
            '<span class="app-step{}">{}</span></span>',
            (
                (
                    i["id"],
                    i["env"],
                    i["status"],
                    i["status"],
                    " app-step-error" if i["error"] else "",
                    i["error"] or i["step"],
                )
                for i in live.deployment_items(obj.deployments.all(), timezone.now()).values()
            ),
        )

    @admin.display(description="status per environment")
    def status_detail(self, obj: Application):
        items = live.deployment_items(
            obj.deployments.select_related("environment", "application"), timezone.now()
        )
        if not items:
            return "on no environment"
        return format_html(
            "<table><tr><th>environment</th><th>status</th><th>wanted</th>"
            "<th>step, or error and when</th></tr>{}</table>",
            format_html_join(
                "",
                '<tr data-deployment="{}"><td>{}</td>'
                '<td><span class="app-status app-status-{}">{}</span></td><td>{}</td>'
                '<td><span class="app-step{}">{}</span></td></tr>',
                (
                    (
                        i["id"],
                        i["env"],
                        i["status"],
                        i["status"],
                        i["desired"],
                        " app-step-error" if i["error"] else "",
                        f"{i['error']} ({i['at']})" if i["error"] else i["step"],
                    )
                    for i in items.values()
                ),
            ),
        )

    @admin.display(description="")
    def visit(self, obj: Application):
        return format_html('<a href="/apps/{}/admin/" target="_blank">Visit</a>', obj.name)

    @admin.display(description="recent status changes")
    def history(self, obj: Application):
        rows = selectors.application_history(obj)[:50]
        if not rows:
            return "none yet"
        return format_html(
            "<table><tr><th>when</th><th>environment</th><th>change</th><th>reason</th>"
            "<th>by</th><th>command</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        r.at.isoformat(timespec="milliseconds"),
                        r.deployment.environment.name,
                        r.old_status,
                        r.new_status,
                        r.reason,
                        r.actor,
                        r.command_id or "",
                    )
                    for r in rows
                ),
            ),
        )

    # --- saving through services --------------------------------------------------------
    def save_model(self, request, obj, form, change):
        if change:
            services.application_update(application=obj)
            return
        created = services.application_create(
            # The model fields of the form are exactly application_create's keywords.
            **{f: form.cleaned_data[f] for f in ApplicationForm.Meta.fields},
            environments=[e.name for e in form.cleaned_data["run_on"]],
        )
        # The admin goes on with `obj` (log entry, redirect): make it the stored row.
        obj.pk = created.pk
        obj._state.adding = False
        obj._state.db = created._state.db

    def save_related(self, request, form, formsets, change):
        if not change:
            return  # application_create placed it already
        environments = list(form.cleaned_data["run_on"])
        try:
            with transaction.atomic():
                services.application_set_environments(
                    application=form.instance, environments=environments
                )
        except ValidationError as exc:
            self.message_user(request, "; ".join(exc.messages), messages.ERROR)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        obj = self.get_object(request, object_id)
        if obj is not None and request.method == "GET":
            pending = services.application_take_pending_password(obj)
            if pending:
                self.message_user(
                    request,
                    f"Initial superuser of {obj.name}: {pending[0]} / {pending[1]} "
                    "(shown once; change it after the first login).",
                    messages.WARNING,
                )
        return super().change_view(request, object_id, form_url, extra_context)

    def delete_model(self, request, obj):
        services.application_delete(
            application=obj, drop_database=False, actor=request.user.get_username()
        )

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            self.delete_model(request, obj)

    # --- actions -------------------------------------------------------------------------
    def has_start_permission(self, request):
        return request.user.has_perm("supervisor.start_application")

    def has_drop_permission(self, request):
        return request.user.has_perm("supervisor.drop_application_database") and (
            request.user.has_perm("supervisor.delete_application")
        )

    def _report(self, request, verb: str, outcomes) -> None:
        done = sum(1 for o in outcomes if o.ok and o.started)
        skipped = sum(1 for o in outcomes if o.skipped and not o.started)
        failed = [o for o in outcomes if not o.ok]
        self.message_user(request, f"{verb}: {done} app(s); {skipped} already in progress.")
        for outcome in failed:
            self.message_user(
                request,
                f"{outcome.application}: "
                + "; ".join(f"{env}: {err}" for env, err in outcome.failed.items()),
                messages.ERROR,
            )

    @admin.action(description="Start selected apps", permissions=["start"])
    def start_apps(self, request, queryset):
        actor = request.user.get_username()
        outcomes = [
            services.application_start(application=a, actor=actor, wait=False) for a in queryset
        ]
        self._report(request, "Start requested", outcomes)

    @admin.action(description="Stop selected apps", permissions=["start"])
    def stop_apps(self, request, queryset):
        actor = request.user.get_username()
        outcomes = [services.application_stop(application=a, actor=actor) for a in queryset]
        self._report(request, "Stopped", outcomes)

    @admin.action(description="Restart selected apps", permissions=["start"])
    def restart_apps(self, request, queryset):
        actor = request.user.get_username()
        outcomes = [
            services.application_restart(application=a, actor=actor, wait=False) for a in queryset
        ]
        self._report(request, "Restart requested", outcomes)

    def _confirm_delete(self, request, queryset, *, drop: bool, action: str):
        if request.POST.get("confirmed") == "yes":
            deleted, errors = 0, []
            for application in queryset:
                try:
                    services.application_delete(
                        application=application,
                        drop_database=drop,
                        actor=request.user.get_username(),
                    )
                    deleted += 1
                except ValidationError as exc:
                    errors.append("; ".join(exc.messages))
            what = "with their databases" if drop else "(databases kept)"
            self.message_user(request, f"Deleted {deleted} app(s) {what}.")
            for error in errors:
                self.message_user(request, error, messages.ERROR)
            return None
        return TemplateResponse(
            request,
            "admin/supervisor/confirm_delete.html",
            {
                **self.admin_site.each_context(request),
                "title": "Delete apps with their databases" if drop else "Delete apps",
                "applications": queryset,
                "drop": drop,
                "action": action,
                "action_checkbox_name": ACTION_CHECKBOX_NAME,
                "opts": self.model._meta,
            },
        )

    @admin.action(description="Delete selected apps (keep their databases)", permissions=["delete"])
    def delete_apps(self, request, queryset):
        return self._confirm_delete(request, queryset, drop=False, action="delete_apps")

    @admin.action(description="Delete selected apps AND their databases", permissions=["drop"])
    def delete_apps_with_data(self, request, queryset):
        return self._confirm_delete(request, queryset, drop=True, action="delete_apps_with_data")


@admin.register(Environment)
class EnvironmentAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "liveness",
        "last_seen",
        "version",
        "url",
        "proxy_url",
        "started_at",
    ]
    search_fields = ["name", "url"]
    readonly_fields = [
        "name",
        "url",
        "proxy_url",
        "version",
        "status",
        "heartbeat_interval",
        "started_at",
        "last_heartbeat_at",
        "next_deadline_at",
        "created_at",
        "registration_history",
    ]

    class Media:
        js = ["supervisor/live.js"]

    actions = ["purge_offline"]

    def has_add_permission(self, request):
        return False  # environments register themselves

    def has_purge_permission(self, request):
        return request.user.has_perm("supervisor.delete_environment")

    @admin.action(description="Purge selected environments that are offline", permissions=["purge"])
    def purge_offline(self, request, queryset):
        names = list(queryset.values_list("name", flat=True))
        purged = services.environments_purge(older_than=0, names=names)
        skipped = sorted(set(names) - set(purged))
        self.message_user(request, f"Purged {len(purged)} environment(s).")
        if skipped:
            self.message_user(request, f"Not offline, kept: {', '.join(skipped)}", messages.WARNING)

    def has_change_permission(self, request, obj=None):
        return False

    def _live_attrs(self, obj: Environment) -> dict:
        item = live.environment_item(obj, timezone.now())
        return {
            "state": item["state"],
            "stored": item["stored"],
            "at": item["last_heartbeat_at"] or "",
            "interval": item["interval"] or "",
            "grace": item["grace"],
        }

    @admin.display(description="status")
    def liveness(self, obj: Environment):
        a = self._live_attrs(obj)
        return format_html(
            '<span class="app-status app-status-{}" data-env-state="{}" data-stored="{}" '
            'data-at="{}" data-interval="{}" data-grace="{}">{}</span>',
            a["state"],
            obj.name,
            a["stored"],
            a["at"],
            a["interval"],
            a["grace"],
            a["state"],
        )

    @admin.display(description="last seen", ordering="last_heartbeat_at")
    def last_seen(self, obj: Environment):
        a = self._live_attrs(obj)
        return format_html(
            '<span data-heartbeat="{}" data-stored="{}" data-at="{}" data-interval="{}" '
            'data-grace="{}" title="{}">{}</span>',
            obj.name,
            a["stored"],
            a["at"],
            a["interval"],
            a["grace"],
            a["at"],
            a["at"] or "never",
        )

    @admin.display(description="registration history")
    def registration_history(self, obj: Environment):
        rows = selectors.environment_history(obj.name)[:50]
        if not rows:
            return "none recorded"
        return format_html(
            "<table><tr><th>when</th><th>event</th><th>detail</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (r.at.isoformat(timespec="milliseconds"), r.get_kind_display(), r.detail)
                    for r in rows
                ),
            ),
        )
