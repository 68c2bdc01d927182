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
