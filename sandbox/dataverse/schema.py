"""The tables the sandbox knows (docs/domain.md and the webhook registration tables).

Column kinds: S string, B bool, I int, O option set, D datetime, G the primary key, F float.
Lookups are stored and read as ``_<attr>_value``; they are written through a navigation property
(``<nav>@odata.bind``).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

S, B, I, O, D, G, F = "S", "B", "I", "O", "D", "G", "F"


@dataclass(frozen=True)
class Lookup:
    attr: str  # logical name, e.g. msdynmkt_purposeid
    nav: str  # navigation property, e.g. msdynmkt_purposeId
    target: str  # table it points to

    @property
    def column(self) -> str:
        return f"_{self.attr}_value"


@dataclass
class Table:
    name: str
    entity_set: str
    key: str
    columns: dict[str, str]
    lookups: list[Lookup] = field(default_factory=list)
    indexed: tuple[str, ...] = ()  # columns with a secondary (case-folded) index
    metadata: bool = False  # kept by /_sandbox/reset

    def __post_init__(self):
        self.columns = {self.key: G, **self.columns, **_SYSTEM}
        for lk in self.lookups + _SYSTEM_LOOKUPS:
            self.columns[lk.column] = G
        self.all_lookups = self.lookups + _SYSTEM_LOOKUPS
        self.by_nav = {lk.nav.lower(): lk for lk in self.all_lookups}
        self.by_column = {lk.column: lk for lk in self.all_lookups}
        self.by_attr = {lk.attr: lk for lk in self.all_lookups}


_SYSTEM = {"createdon": D, "modifiedon": D, "versionnumber": I, "statecode": O, "statuscode": O}
_SYSTEM_LOOKUPS = [Lookup("createdby", "createdby", "systemuser"), Lookup("modifiedby", "modifiedby", "systemuser"),
                   Lookup("ownerid", "ownerid", "systemuser")]
_PERSON = {"firstname": S, "lastname": S, "fullname": S, "emailaddress1": S, "emailaddress2": S, "emailaddress3": S,
           "donotbulkemail": B, "donotemail": B, "donotphone": B, "donotpostalmail": B, "telephone1": S,
           "jobtitle": S, "description": S}
_EMAILS = ("emailaddress1", "emailaddress2", "emailaddress3")

TABLES: dict[str, Table] = {t.name: t for t in [
    Table("contact", "contacts", "contactid", dict(_PERSON), indexed=_EMAILS),
    Table("lead", "leads", "leadid", {**_PERSON, "subject": S, "companyname": S}, indexed=_EMAILS),
    Table("list", "lists", "listid", {"listname": S, "msdyncrm_issubscription": B, "type": B, "createdfromcode": O,
                                      "description": S, "purpose": S, "membercount": I}),
    Table("msdynmkt_contactpointconsent4", "msdynmkt_contactpointconsent4s", "msdynmkt_contactpointconsent4id",
          {"msdynmkt_contactpointvalue": S, "msdynmkt_contactpointtype": O, "msdynmkt_contactpointconsenttype": O,
           "msdynmkt_value": O, "msdynmkt_source": O, "msdynmkt_logicalreason": O, "msdynmkt_reason": S,
           "msdynmkt_name": S},
          [Lookup("msdynmkt_purposeid", "msdynmkt_purposeId", "msdynmkt_purpose"),
           Lookup("msdynmkt_topicid", "msdynmkt_topicId", "msdynmkt_topic")],
          indexed=("msdynmkt_contactpointvalue", "_msdynmkt_purposeid_value", "_msdynmkt_topicid_value")),
    Table("msdynmkt_purpose", "msdynmkt_purposes", "msdynmkt_purposeid",
          {"msdynmkt_name": S, "msdynmkt_type": O, "msdynmkt_description": S}),
    Table("msdynmkt_topic", "msdynmkt_topics", "msdynmkt_topicid", {"msdynmkt_name": S, "msdynmkt_description": S},
          [Lookup("msdynmkt_purposeid", "msdynmkt_purposeId", "msdynmkt_purpose")],
          indexed=("_msdynmkt_purposeid_value",)),
    Table("msdynmkt_compliancesettings4", "msdynmkt_compliancesettings4s", "msdynmkt_compliancesettings4id",
          {"msdynmkt_name": S, "msdynmkt_description": S}),
    Table("serviceendpoint", "serviceendpoints", "serviceendpointid",
          {"name": S, "contract": O, "url": S, "authtype": O, "authvalue": S, "messageformat": O,
           "namespaceaddress": S, "description": S, "userclaim": O, "connectionmode": O}),
    Table("sdkmessageprocessingstep", "sdkmessageprocessingsteps", "sdkmessageprocessingstepid",
          {"name": S, "stage": O, "mode": O, "rank": I, "supporteddeployment": O, "filteringattributes": S,
           "asyncautodelete": B, "description": S, "configuration": S},
          [Lookup("sdkmessageid", "sdkmessageid", "sdkmessage"),
           Lookup("sdkmessagefilterid", "sdkmessagefilterid", "sdkmessagefilter"),
           Lookup("eventhandler", "eventhandler_serviceendpoint", "serviceendpoint")]),
    Table("sdkmessageprocessingstepimage", "sdkmessageprocessingstepimages", "sdkmessageprocessingstepimageid",
          {"name": S, "imagetype": O, "entityalias": S, "attributes": S, "messagepropertyname": S, "description": S},
          [Lookup("sdkmessageprocessingstepid", "sdkmessageprocessingstepid", "sdkmessageprocessingstep")]),
    Table("sdkmessage", "sdkmessages", "sdkmessageid", {"name": S, "categoryname": S}, metadata=True),
    Table("sdkmessagefilter", "sdkmessagefilters", "sdkmessagefilterid",
          {"primaryobjecttypecode": S, "secondaryobjecttypecode": S, "iscustomprocessingstepallowed": B},
          [Lookup("sdkmessageid", "sdkmessageid", "sdkmessage")], metadata=True),
    Table("systemuser", "systemusers", "systemuserid",
          {"fullname": S, "domainname": S, "applicationid": G, "azureactivedirectoryobjectid": G, "isdisabled": B},
          metadata=True),
]}
BY_SET = {t.entity_set: t for t in TABLES.values()}

# N:N relationships of list membership: schema name -> (list side, member side).
RELATIONSHIPS = {"listcontact_association": ("list", "contact"), "listlead_association": ("list", "lead")}
MEMBER_TABLE_BY_CODE = {2: "contact", 4: "lead"}

MESSAGES = ("Create", "Update", "Delete", "Associate", "Disassociate", "AddMember", "AddListMembers", "RemoveMember")
_NS = uuid.UUID("6f1c2a4e-6b0e-4c55-9a59-0d5a7c1d2b11")
ORGANIZATION_ID = str(uuid.uuid5(_NS, "organization"))
BUSINESS_UNIT_ID = str(uuid.uuid5(_NS, "businessunit"))
ORGANIZATION_NAME = "straddlesandbox"


def message_id(name: str) -> str:
    return str(uuid.uuid5(_NS, "sdkmessage:" + name))


def filter_id(message: str, table: str) -> str:
    return str(uuid.uuid5(_NS, f"sdkmessagefilter:{message}:{table}"))


def user_id_for_token(token: str) -> str:
    # Stable per token so a caller's echoes can be recognised across runs.
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "straddle-sandbox-token:" + token))


def metadata_rows() -> dict[str, list[dict]]:
    """sdkmessage and sdkmessagefilter rows as Dataverse has them for the tables we serve."""
    messages = [{"sdkmessageid": message_id(m), "name": m} for m in MESSAGES]
    filters = []
    data_tables = ("contact", "lead", "list", "msdynmkt_contactpointconsent4", "msdynmkt_purpose", "msdynmkt_topic",
                   "msdynmkt_compliancesettings4")
    for m in ("Create", "Update", "Delete"):
        for t in data_tables:
            filters.append((m, t))
    for m in ("AddMember", "AddListMembers", "RemoveMember"):
        filters.append((m, "list"))
    for m in ("Associate", "Disassociate"):
        filters.append((m, "none"))  # these messages have no entity filter in Dataverse
    return {"sdkmessage": messages,
            "sdkmessagefilter": [{"sdkmessagefilterid": filter_id(m, t), "primaryobjecttypecode": t,
                                  "secondaryobjecttypecode": "none", "iscustomprocessingstepallowed": True,
                                  "_sdkmessageid_value": message_id(m)} for m, t in filters]}
