from django.contrib.admin.widgets import FilteredSelectMultiple

from plumbing.admin_widgets import QuickFilteredSelectMultiple

CHOICES = [
    ("1", "accounts | user | Can add <user>"),
    ("2", 'billing | price | Can "change" price'),
    ("Group", [("3", "in a group"), ("4", "another")]),
]


def normalised(html) -> str:
    return " ".join(str(html).split()).replace("> <", "><")


def test_the_quick_picker_writes_the_same_markup_as_djangos():
    for stacked in (False, True):
        django_widget = FilteredSelectMultiple("user permissions", stacked, choices=CHOICES)
        quick = QuickFilteredSelectMultiple("user permissions", stacked, choices=CHOICES)
        for value in ([], ["2", "3"]):
            attrs = {"id": "id_user_permissions"}
            expected = django_widget.render("user_permissions", value, attrs)
            assert normalised(quick.render("user_permissions", value, attrs)) == normalised(
                expected
            )


def test_a_users_page_offers_groups_and_permissions_with_the_quick_picker(operator_client, user):
    page = operator_client.get(f"/admin/accounts/user/{user.pk}/change/")

    form = page.context["adminform"].form
    for name in ("groups", "user_permissions"):
        assert isinstance(form.fields[name].widget.widget, QuickFilteredSelectMultiple), name
    assert 'class="selectfilter" data-field-name="user permissions"' in page.content.decode()


def _picker_options(page, name):
    import re

    html = page.content.decode()
    select = re.search(rf'<select name="{name}".*?</select>', html, re.S).group(0)
    return re.findall(r'<option value="([^"]*)"[^>]*>([^<]*)</option>', select)


def test_a_users_page_offers_every_permission_as_djangos_own_choices_would(operator_client, user):
    # The 222 options are built from a list kept per process (building them from the
    # queryset each page was most of the picker's time), equal to what Django would offer.
    from django.contrib.auth.models import Permission
    from django.utils.html import escape

    url = f"/admin/accounts/user/{user.pk}/change/"
    expected = [
        (str(p.pk), escape(str(p))) for p in Permission.objects.select_related("content_type")
    ]
    assert _picker_options(operator_client.get(url), "user_permissions") == expected
    queries = []
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        operator_client.get(url)
    queries = [q["sql"] for q in captured.captured_queries]
    # The second page does not read every permission again.
    every = [q for q in queries if 'FROM "auth_permission" INNER JOIN' in q and "WHERE" not in q]
    assert not every, every


def test_a_permission_added_or_renamed_shows_on_the_next_users_page(operator_client, user):
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType

    url = f"/admin/accounts/user/{user.pk}/change/"
    operator_client.get(url)
    kind = ContentType.objects.get(app_label="accounts", model="user")
    added = Permission.objects.create(content_type=kind, codename="zz_new", name="Can zz")
    assert (str(added.pk), str(added)) in _picker_options(
        operator_client.get(url), "user_permissions"
    )
    Permission.objects.filter(pk=added.pk).update(name="Can yy")
    added.refresh_from_db()
    assert str(added).endswith("| Can yy")
    assert (str(added.pk), str(added)) in _picker_options(
        operator_client.get(url), "user_permissions"
    )


def test_a_groups_page_offers_every_permission_from_the_kept_list(operator_client):
    from django.contrib.auth.models import Group, Permission
    from django.db import connection
    from django.test.utils import CaptureQueriesContext
    from django.utils.html import escape

    group = Group.objects.create(name="Support")
    url = f"/admin/auth/group/{group.pk}/change/"
    expected = [
        (str(p.pk), escape(str(p))) for p in Permission.objects.select_related("content_type")
    ]
    assert _picker_options(operator_client.get(url), "permissions") == expected
    with CaptureQueriesContext(connection) as captured:
        operator_client.get(url)
    every = [
        q["sql"]
        for q in captured.captured_queries
        if 'FROM "auth_permission" INNER JOIN' in q["sql"] and "WHERE" not in q["sql"]
    ]
    assert not every, every
