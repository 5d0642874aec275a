"""The tables the sandbox knows (docs/domain.md and the webhook registration tables).

Column kinds: S string, B bool, I int, O option set, D datetime, G the primary key, F float,
M managed property (an object). ``choices`` holds the documented values of option sets that have
them (the registration tables'); a value outside them is refused as Dataverse does.
Lookups are stored and read as ``_<attr>_value``; they are written through a navigation property
(``<nav>@odata.bind``).
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field

S, B, I, O, D, G, F, M = "S", "B", "I", "O", "D", "G", "F", "M"  # M: a ManagedProperty object


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
    choices: dict[str, frozenset[int]] = field(default_factory=dict)  # option set -> documented values

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
           "msdynmkt_value": O, "msdynmkt_source": O, "msdynmkt_logicalreason": O, "msdynmkt_reason": S},
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
    # The registration tables: every writable column of Microsoft's table references (lookups to
    # tables the sandbox does not have excepted, see FIDELITY.md), with their documented choices.
    Table("serviceendpoint", "serviceendpoints", "serviceendpointid",
          {"name": S, "contract": O, "url": S, "authtype": O, "authvalue": S, "messageformat": O,
           "namespaceaddress": S, "namespaceformat": O, "description": S, "userclaim": O, "connectionmode": O,
           "introducedversion": S, "iscustomizable": M, "messagecharset": O, "path": S,
           "runtimeintegrationproperties": S, "saskey": S, "saskeyname": S, "sastoken": S, "schematype": O,
           "solutionnamespace": S, "usekeyvaultconfiguration": B},
          choices={"authtype": frozenset(range(1, 9)), "connectionmode": frozenset({1, 2}),
                   "contract": frozenset(range(1, 11)), "messagecharset": frozenset({0, 1}),
                   "messageformat": frozenset({1, 2, 3}), "namespaceformat": frozenset({1, 2}),
                   "schematype": frozenset({1, 2}), "userclaim": frozenset({1, 2, 3})}),
    Table("sdkmessageprocessingstep", "sdkmessageprocessingsteps", "sdkmessageprocessingstepid",
          {"name": S, "stage": O, "mode": O, "rank": I, "supporteddeployment": O, "filteringattributes": S,
           "asyncautodelete": B, "description": S, "configuration": S, "canbebypassed": B,
           "canusereadonlyconnection": B, "category": S, "enablepluginprofiler": B, "eventexpander": S,
           "introducedversion": S, "invocationsource": O, "iscustomizable": M, "ishidden": M,
           "runtimeintegrationproperties": S},
          [Lookup("sdkmessageid", "sdkmessageid", "sdkmessage"),
           Lookup("sdkmessagefilterid", "sdkmessagefilterid", "sdkmessagefilter"),
           Lookup("eventhandler", "eventhandler_serviceendpoint", "serviceendpoint"),
           Lookup("impersonatinguserid", "impersonatinguserid", "systemuser")],
          choices={"stage": frozenset({5, 10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 80, 90}),
                   "mode": frozenset({0, 1}), "supporteddeployment": frozenset({0, 1, 2}),
                   "invocationsource": frozenset({-1, 0, 1}), "statecode": frozenset({0, 1}),
                   "statuscode": frozenset({1, 2})}),
    Table("sdkmessageprocessingstepimage", "sdkmessageprocessingstepimages", "sdkmessageprocessingstepimageid",
          {"name": S, "imagetype": O, "entityalias": S, "attributes": S, "messagepropertyname": S, "description": S,
           "introducedversion": S, "iscustomizable": M, "relatedattributename": S},
          [Lookup("sdkmessageprocessingstepid", "sdkmessageprocessingstepid", "sdkmessageprocessingstep")],
          choices={"imagetype": frozenset({0, 1, 2})}),
    # Audit history (read-only through the Web API): rows the sandbox writes itself when a
    # member's flags change, where auditing is on (see FIDELITY.md).
    Table("audit", "audits", "auditid",
          {"operation": O, "action": O, "attributemask": S, "objecttypecode": S, "transactionid": G},
          [Lookup("objectid", "objectid", "contact"), Lookup("userid", "userid", "systemuser")],
          indexed=("_objectid_value",)),
    Table("sdkmessage", "sdkmessages", "sdkmessageid", {"name": S, "categoryname": S}, metadata=True),
    Table("sdkmessagefilter", "sdkmessagefilters", "sdkmessagefilterid",
          {"primaryobjecttypecode": S, "secondaryobjecttypecode": S, "iscustomprocessingstepallowed": B},
          [Lookup("sdkmessageid", "sdkmessageid", "sdkmessage")], metadata=True),
    Table("systemuser", "systemusers", "systemuserid",
          {"fullname": S, "domainname": S, "applicationid": G, "azureactivedirectoryobjectid": G, "isdisabled": B},
          metadata=True),
]}
BY_SET = {t.entity_set: t for t in TABLES.values()}
#: Each table's PrimaryNameAttribute (the table references): ordering by a lookup orders by it.
PRIMARY_NAME = {"contact": "fullname", "lead": "fullname", "list": "listname",
                "msdynmkt_contactpointconsent4": "msdynmkt_contactpointvalue", "msdynmkt_purpose": "msdynmkt_name",
                "msdynmkt_topic": "msdynmkt_name", "msdynmkt_compliancesettings4": "msdynmkt_name",
                "serviceendpoint": "name", "sdkmessageprocessingstep": "name", "sdkmessageprocessingstepimage": "name",
                "sdkmessage": "name", "systemuser": "fullname"}
#: Tables whose state is set by an update (SetState), never on create: a create starts them enabled.
STATE_AFTER_CREATE = {"sdkmessageprocessingstep"}

#: The listmember intersect table, served read-only (``GET listmembers``) from the memberships;
#: not in TABLES: it has no rows of its own and every write goes through the list's actions.
LISTMEMBER = Table("listmember", "listmembers", "listmemberid", {"entitytype": S, "name": S},
                   [Lookup("listid", "listid", "list"), Lookup("entityid", "entityid", "contact")])
#: Tables the Web API only reads (writes answer 405).
READ_ONLY = {"audit"}
#: Member columns whose changes the sandbox audits (when auditing is on).
AUDITED = ("donotbulkemail", "donotemail")

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
