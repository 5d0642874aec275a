"""Webhook registration as Dataverse data: serviceendpoint, steps and their images.

Idempotent: the endpoint is found by name (and updated to the given URL and key), a step by
(endpoint, message, table), an image by (step, alias); only what is missing is created, and a step
or image whose attributes differ is patched. Nothing here logs the URL's key or the auth value.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence
from xml.sax.saxutils import quoteattr

from shared.adapters.dataverse.errors import DataverseNotFound
from shared.adapters.dataverse.odata import guid, id_from_entity_url, literal
from shared.domain.events import LIST_MESSAGE_ALIASES

if TYPE_CHECKING:
    from shared.adapters.dataverse.transport import DataverseTransport

AuthType = Literal["WebhookKey", "HttpHeader", "HttpQueryString"]
AUTH_TYPES = {"WebhookKey": 4, "HttpHeader": 5, "HttpQueryString": 6}
WEBHOOK_CONTRACT = 8
MESSAGE_FORMAT_JSON = 2
STAGE_POST_OPERATION = 40
MODE_ASYNC = 1
IMAGE_PRE, IMAGE_POST = 0, 1
#: Which messages can carry an image, and the message property it is taken from. This follows
#: Microsoft's "entity images" table (and the Plug-in Registration Tool): Create's image hangs on
#: the response's ``Id``; Update and Delete on ``Target``. DOMAIN.md §4 says Target/Id the other way
#: round for Create/Delete; Dataverse rejects an image whose property the message does not have.
IMAGE_PROPERTY = {"Create": "Id", "Update": "Target", "Delete": "Target"}


@dataclass(frozen=True)
class StepSpec:
    """One step to register: ``message`` on ``table`` (None: every table, as Associate needs)."""

    message: str
    table: str | None = None
    filtering_attributes: tuple[str, ...] = ()  # Update only: fire when one of these changes
    image_attributes: tuple[str, ...] = ()  # post-image (pre-image for Delete) columns
    image_alias: str = "PostImage"
    pre_image_attributes: tuple[str, ...] = ()  # Update only: the columns' values before the change
    pre_image_alias: str = "PreImage"

    def __post_init__(self) -> None:
        if self.image_attributes and self.message not in IMAGE_PROPERTY:
            raise ValueError(f"{self.message} steps cannot carry an image")
        # Create has no row before it, Delete none after: only Update carries both images.
        if self.pre_image_attributes and self.message != "Update":
            raise ValueError(f"{self.message} steps cannot carry a pre-image besides their image")

    def images(self) -> tuple[tuple[str, int, tuple[str, ...]], ...]:
        """(alias, imagetype, columns) of every image the step carries."""
        out = []
        if self.image_attributes:  # Delete has no post-image: its last state is the pre-image
            out.append((self.image_alias, IMAGE_PRE if self.message == "Delete" else IMAGE_POST, self.image_attributes))
        if self.pre_image_attributes:
            out.append((self.pre_image_alias, IMAGE_PRE, self.pre_image_attributes))
        return tuple(out)


@dataclass(frozen=True)
class StepStatus:
    id: str
    name: str
    message: str | None
    table: str | None
    filtering_attributes: tuple[str, ...]
    enabled: bool
    images: Mapping[str, tuple[str, ...]]  # alias -> attributes


@dataclass(frozen=True)
class WebhookRegistration:
    endpoint_id: str
    name: str
    url: str | None
    auth_type: int | None
    steps: tuple[StepStatus, ...]
    auth_names: tuple[str, ...] | None = None  # where the authentication is sent (names only)


@dataclass(frozen=True)
class RegistrationResult:
    endpoint_id: str
    endpoint_created: bool
    step_ids: tuple[str, ...]  # in the order of the specs
    created_steps: int = 0
    updated_steps: int = 0
    created_images: int = 0
    updated_images: int = 0


def settings_xml(values: Mapping[str, str]) -> str:
    """HttpHeader / HttpQueryString auth value: ``<settings><setting name=".." value=".." /></settings>``."""
    items = "".join(f"<setting name={quoteattr(k)} value={quoteattr(v)} />" for k, v in values.items())
    return f"<settings>{items}</settings>"


AUTH_NAMES_PREFIX = "Registered by Straddle; authentication sent as: "


def auth_description(names: Sequence[str]) -> str:
    return AUTH_NAMES_PREFIX + ", ".join(n.lower() for n in names)


def auth_names(description: str | None) -> tuple[str, ...] | None:
    """The header/query names a registration sends its authentication in; None if not recorded."""
    if not description or AUTH_NAMES_PREFIX not in description:
        return None
    tail = description.split(AUTH_NAMES_PREFIX, 1)[1]
    return tuple(n.strip() for n in tail.split(",") if n.strip())


def _attrs(text: str | None) -> tuple[str, ...]:
    return tuple(sorted({a.strip().lower() for a in (text or "").split(",") if a.strip()}))


class WebhookRegistrations:
    """Mixed into the client; uses the transport's ``request``/``query_rows``/``get_json``."""

    def _created_id(self: "DataverseTransport", entity_set: str, body: Mapping[str, Any]) -> str:
        resp = self.request("POST", entity_set, json=body)
        created = id_from_entity_url(resp.headers.get("OData-EntityId"))
        if not created:
            raise DataverseNotFound(f"create in {entity_set} returned no OData-EntityId", status=resp.status_code)
        return created

    def _message_id(self, message: str) -> str:
        cache = self.__dict__.setdefault("_sdkmessage_ids", {})
        if message not in cache:
            # A list message may be named as its Web API action (AddMemberList) instead.
            names = [message] + [alias for alias, name in LIST_MESSAGE_ALIASES.items() if name == message]
            flt = " or ".join(f"name eq {literal(n)}" for n in names)
            rows = self.get_json("sdkmessages", {"$select": "sdkmessageid,name",  # type: ignore[attr-defined]
                                                 "$filter": flt}).get("value") or []
            rows.sort(key=lambda r: names.index(r.get("name")) if r.get("name") in names else len(names))
            if not rows:
                raise DataverseNotFound(f"sdkmessage {message!r} not found", status=404)
            cache[message] = str(rows[0]["sdkmessageid"]).lower()
        return cache[message]

    def _filter_id(self, message_id: str, table: str) -> str:
        cache = self.__dict__.setdefault("_sdkfilter_ids", {})
        key = (message_id, table)
        if key not in cache:
            flt = f"primaryobjecttypecode eq {literal(table)} and _sdkmessageid_value eq {message_id}"
            rows = self.get_json("sdkmessagefilters", {"$select": "sdkmessagefilterid",  # type: ignore[attr-defined]
                                                       "$filter": flt}).get("value") or []
            if not rows:
                raise DataverseNotFound(f"no sdkmessagefilter for message {message_id} on table {table!r}", status=404)
            cache[key] = str(rows[0]["sdkmessagefilterid"]).lower()
        return cache[key]

    def _endpoints(self, name_or_url: str) -> list[dict]:
        flt = f"contract eq {WEBHOOK_CONTRACT} and (name eq {literal(name_or_url)} or url eq {literal(name_or_url)})"
        return list(self.query_rows("serviceendpoints",  # type: ignore[attr-defined]
                                    {"$select": "serviceendpointid,name,url,authtype,description", "$filter": flt}))

    def _steps_of(self, endpoint_id: str) -> list[dict]:
        return list(self.query_rows("sdkmessageprocessingsteps", {  # type: ignore[attr-defined]
            "$select": "sdkmessageprocessingstepid,name,_sdkmessageid_value,_sdkmessagefilterid_value,"
                       "filteringattributes,statecode,asyncautodelete",
            "$filter": f"_eventhandler_value eq {endpoint_id}"}))

    def _images_of(self, step_id: str) -> list[dict]:
        return list(self.query_rows("sdkmessageprocessingstepimages", {  # type: ignore[attr-defined]
            "$select": "sdkmessageprocessingstepimageid,entityalias,attributes,imagetype",
            "$filter": f"_sdkmessageprocessingstepid_value eq {step_id}"}))

    def register_webhook(self, url: str, *, name: str, auth: AuthType, auth_value: str | Mapping[str, str],
                         steps: Sequence[StepSpec]) -> RegistrationResult:
        if auth not in AUTH_TYPES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_TYPES)}")
        # authvalue cannot be read back (IsValidForRead false), so the description records which
        # header or query names carry it (never the values): status checks them against the settings.
        names = ["code"] if auth == "WebhookKey" else list(auth_value) if not isinstance(auth_value, str) else []
        if not isinstance(auth_value, str):
            auth_value = settings_xml(auth_value)
        endpoint = {"name": name, "contract": WEBHOOK_CONTRACT, "url": url, "authtype": AUTH_TYPES[auth],
                    "authvalue": auth_value, "messageformat": MESSAGE_FORMAT_JSON,
                    "description": auth_description(names)}
        found = [e for e in self._endpoints(name) if e.get("name") == name]
        if found:
            endpoint_id = str(found[0]["serviceendpointid"]).lower()
            # authvalue cannot be read back, so it is always rewritten (this also rotates a key).
            self.request("PATCH", f"serviceendpoints({endpoint_id})", json=endpoint,  # type: ignore[attr-defined]
                         headers={"If-Match": "*"})
        else:
            endpoint_id = self._created_id("serviceendpoints", endpoint)
        existing = self._steps_of(endpoint_id)
        step_ids: list[str] = []
        counts = dict(created_steps=0, updated_steps=0, created_images=0, updated_images=0)
        for spec in steps:
            message_id = self._message_id(spec.message)
            filter_id = self._filter_id(message_id, spec.table) if spec.table else None
            wanted_attrs = _attrs(",".join(spec.filtering_attributes)) if spec.message == "Update" else ()
            match = next((s for s in existing
                          if _lower(s.get("_sdkmessageid_value")) == message_id
                          and _lower(s.get("_sdkmessagefilterid_value")) == filter_id), None)
            if match:
                step_id = str(match["sdkmessageprocessingstepid"]).lower()
                patch: dict[str, Any] = {}
                if _attrs(match.get("filteringattributes")) != wanted_attrs:
                    patch["filteringattributes"] = ",".join(wanted_attrs) or None
                if match.get("asyncautodelete") is False:  # registered before system jobs were auto-deleted
                    patch["asyncautodelete"] = True
                if patch:
                    self.request("PATCH", f"sdkmessageprocessingsteps({step_id})",  # type: ignore[attr-defined]
                                 json=patch, headers={"If-Match": "*"})
                    counts["updated_steps"] += 1
            else:
                body: dict[str, Any] = {
                    "name": f"{name}: {spec.message} of {spec.table or 'any table'}",
                    "description": "Registered by Straddle",
                    "stage": STAGE_POST_OPERATION, "mode": MODE_ASYNC, "rank": 1, "supporteddeployment": 0,
                    # Succeeded system jobs of async steps are deleted, not left to pile up.
                    "asyncautodelete": True,
                    "sdkmessageid@odata.bind": f"/sdkmessages({message_id})",
                    "eventhandler_serviceendpoint@odata.bind": f"/serviceendpoints({endpoint_id})",
                }
                if filter_id:
                    body["sdkmessagefilterid@odata.bind"] = f"/sdkmessagefilters({filter_id})"
                if wanted_attrs:
                    body["filteringattributes"] = ",".join(wanted_attrs)
                step_id = self._created_id("sdkmessageprocessingsteps", body)
                existing.append({"sdkmessageprocessingstepid": step_id, "_sdkmessageid_value": message_id,
                                 "_sdkmessagefilterid_value": filter_id,
                                 "filteringattributes": ",".join(wanted_attrs)})
                counts["created_steps"] += 1
            step_ids.append(step_id)
            if spec.images():
                self._ensure_images(step_id, spec, counts, new_step=not match)
        return RegistrationResult(endpoint_id, not found, tuple(step_ids), **counts)

    def _ensure_images(self, step_id: str, spec: StepSpec, counts: dict[str, int], new_step: bool) -> None:
        images = [] if new_step else self._images_of(step_id)
        for alias, image_type, columns in spec.images():
            attrs = _attrs(",".join(columns))
            image = next((i for i in images if (i.get("entityalias") or "").lower() == alias.lower()), None)
            if image is None:
                self._created_id("sdkmessageprocessingstepimages", {
                    "name": alias, "entityalias": alias, "imagetype": image_type,
                    "attributes": ",".join(attrs), "messagepropertyname": IMAGE_PROPERTY[spec.message],
                    "sdkmessageprocessingstepid@odata.bind": f"/sdkmessageprocessingsteps({step_id})"})
                counts["created_images"] += 1
            elif _attrs(image.get("attributes")) != attrs:
                image_id = str(image["sdkmessageprocessingstepimageid"]).lower()
                self.request("PATCH", f"sdkmessageprocessingstepimages({image_id})",  # type: ignore[attr-defined]
                             json={"attributes": ",".join(attrs)}, headers={"If-Match": "*"})
                counts["updated_images"] += 1

    def webhook_registrations(self, name_or_url: str) -> list[WebhookRegistration]:
        """What is registered under this endpoint name or URL (empty: nothing)."""
        out = []
        for e in self._endpoints(name_or_url):
            endpoint_id = str(e["serviceendpointid"]).lower()
            steps = []
            for s in self._steps_of(endpoint_id):
                step_id = str(s["sdkmessageprocessingstepid"]).lower()
                images = {i.get("entityalias") or "": _attrs(i.get("attributes")) for i in self._images_of(step_id)}
                steps.append(StepStatus(
                    step_id, s.get("name") or "", self._lookup_name("sdkmessages", s.get("_sdkmessageid_value"), "name"),
                    self._lookup_name("sdkmessagefilters", s.get("_sdkmessagefilterid_value"), "primaryobjecttypecode"),
                    _attrs(s.get("filteringattributes")), s.get("statecode", 0) in (0, None), images))
            out.append(WebhookRegistration(endpoint_id, e.get("name") or "", e.get("url"), e.get("authtype"),
                                           tuple(steps), auth_names(e.get("description"))))
        return out

    def _lookup_name(self, entity_set: str, row_id: Any, column: str) -> str | None:
        if not row_id:
            return None
        cache = self.__dict__.setdefault("_lookup_names", {})
        key = (entity_set, str(row_id).lower())
        if key not in cache:
            try:
                cache[key] = self.get_json(f"{entity_set}({guid(str(row_id))})",  # type: ignore[attr-defined]
                                           {"$select": column}).get(column)
            except DataverseNotFound:
                cache[key] = None
        return cache[key]

    def remove_webhook(self, name_or_url: str) -> int:
        """Deletes the endpoint(s) with this name or URL, their steps and images; returns rows deleted."""
        deleted = 0
        for e in self._endpoints(name_or_url):
            endpoint_id = str(e["serviceendpointid"]).lower()
            for s in self._steps_of(endpoint_id):
                step_id = str(s["sdkmessageprocessingstepid"]).lower()
                for i in self._images_of(step_id):
                    deleted += self._delete(f"sdkmessageprocessingstepimages({guid(i['sdkmessageprocessingstepimageid'])})")
                deleted += self._delete(f"sdkmessageprocessingsteps({step_id})")
            deleted += self._delete(f"serviceendpoints({endpoint_id})")
        return deleted

    def _delete(self, path: str) -> int:
        # 404: already gone (deleting a step may cascade to its images).
        resp = self.request("DELETE", path, ok_statuses=(404,))  # type: ignore[attr-defined]
        return 0 if resp.status_code == 404 else 1


def _lower(value: Any) -> str | None:
    return str(value).lower() if value else None
