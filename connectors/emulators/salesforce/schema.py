"""The emulated org's objects and their fields, as the REST describe and SOQL see them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

ORG_ID = "00D5g000004HITLEAY"
STATUSES = ["New", "Working", "Escalated", "Approved", "Rejected", "Responded", "Closed"]
CLOSED = {"Closed", "Approved", "Rejected"}
EMAIL_STATUSES = ["0", "1", "2", "3", "4", "5"]  # New, Read, Replied, Sent, Forwarded, Draft


def _f(kind: str, *, create: bool = True, update: bool = True, length: int | None = None,
       required: bool = False, values: list[str] | None = None, restricted: bool = False,
       unique: bool = False) -> dict[str, Any]:
    return dict(type=kind, createable=create, updateable=update, length=length, required=required,
                values=values, restricted=restricted, unique=unique)


_RO = dict(create=False, update=False)
_AUDIT = {"CreatedDate": _f("datetime", **_RO), "CreatedById": _f("reference", **_RO),
          "LastModifiedDate": _f("datetime", **_RO), "LastModifiedById": _f("reference", **_RO),
          "SystemModstamp": _f("datetime", **_RO), "IsDeleted": _f("boolean", **_RO)}
SCHEMA: dict[str, dict[str, Any]] = {
    "Case": {"prefix": "500", "fields": {
        "Id": _f("id", **_RO), "CaseNumber": _f("string", **_RO), "Subject": _f("string", length=255),
        "Description": _f("textarea", length=32000), "Status": _f("picklist", values=STATUSES, restricted=True),
        "Priority": _f("picklist", values=["High", "Medium", "Low"]),
        "Origin": _f("picklist", values=["Phone", "Email", "Web", "AI Agent"]),
        "Type": _f("picklist", values=["Question", "Problem", "Feature Request"]),
        "Reason": _f("string", length=255), "ContactId": _f("reference"), "OwnerId": _f("reference"),
        "SuppliedEmail": _f("email", length=80), "SuppliedName": _f("string", length=80),
        "IsClosed": _f("boolean", **_RO), "IsEscalated": _f("boolean"), "ClosedDate": _f("datetime", **_RO),
        "HITL_Review_Id__c": _f("string", length=255, unique=True),
        "AI_Review_Decision__c": _f("picklist", values=["Approved", "Rejected", "Responded"]),
        "AI_Edited_Reply__c": _f("textarea", length=32768), **_AUDIT}},
    "CaseComment": {"prefix": "00a", "fields": {
        "Id": _f("id", **_RO), "ParentId": _f("reference", update=False, required=True),
        "CommentBody": _f("textarea", length=4000), "IsPublished": _f("boolean"), **_AUDIT}},
    "User": {"prefix": "005", "fields": {
        "Id": _f("id", **_RO), "Username": _f("string", **_RO), "Name": _f("string", **_RO),
        "Email": _f("email", **_RO), "IsActive": _f("boolean", **_RO), "UserType": _f("string", **_RO),
        "ContactId": _f("reference", **_RO), "UserRoleId": _f("reference")}},
    # The role hierarchy: each role names its parent.
    "UserRole": {"prefix": "00E", "fields": {
        "Id": _f("id", **_RO), "Name": _f("string", length=80, required=True), "DeveloperName": _f("string", length=80),
        "ParentRoleId": _f("reference"), **_AUDIT}},
    "Contact": {"prefix": "003", "fields": {
        "Id": _f("id", **_RO), "FirstName": _f("string"), "LastName": _f("string", required=True),
        "Name": _f("string", **_RO), "Email": _f("email"), **_AUDIT}},
    # Outgoing and incoming e-mail on a Case (Email-to-Case / Enhanced Email).
    "EmailMessage": {"prefix": "02s", "fields": {
        "Id": _f("id", **_RO), "ParentId": _f("reference", update=False), "Subject": _f("string", length=3000),
        "TextBody": _f("textarea", length=32000), "HtmlBody": _f("textarea", length=32000),
        "ToAddress": _f("string", length=4000), "CcAddress": _f("string", length=4000),
        "FromAddress": _f("email", length=1000), "FromName": _f("string", length=1000),
        "Incoming": _f("boolean", update=False), "MessageDate": _f("datetime"),
        "Status": _f("picklist", values=EMAIL_STATUSES, restricted=True), "IsExternallyVisible": _f("boolean"),
        **_AUDIT}},
    # Queues and public groups, their direct members (users and other groups), the groups
    # Salesforce keeps for each role (RelatedId: the role; their members are implicit: the
    # users in the role, and for RoleAndSubordinates those in the roles below it), and
    # permission sets (setup objects).
    "Group": {"prefix": "00G", "fields": {
        "Id": _f("id", **_RO), "Name": _f("string", length=40, required=True), "DeveloperName": _f("string", length=80),
        "Type": _f("picklist", values=["Queue", "Regular", "Role", "RoleAndSubordinates", "RoleAndSubordinatesInternal",
                                       "Organization"], restricted=True),
        "RelatedId": _f("reference", update=False), **_AUDIT}},
    "GroupMember": {"prefix": "011", "fields": {
        "Id": _f("id", **_RO), "GroupId": _f("reference", update=False, required=True),
        "UserOrGroupId": _f("reference", update=False, required=True), "SystemModstamp": _f("datetime", **_RO)}},
    "PermissionSet": {"prefix": "0PS", "fields": {
        "Id": _f("id", **_RO), "Name": _f("string", length=80, required=True), "Label": _f("string", length=80),
        "IsOwnedByProfile": _f("boolean", **_RO), **_AUDIT}},
    "PermissionSetAssignment": {"prefix": "0Pa", "fields": {
        "Id": _f("id", **_RO), "AssigneeId": _f("reference", update=False, required=True),
        "PermissionSetId": _f("reference", update=False, required=True), "SystemModstamp": _f("datetime", **_RO)}},
}
PARENT_TYPES = {"CaseComment": "Case", "EmailMessage": "Case", "GroupMember": "Group", "PermissionSetAssignment": "PermissionSet"}
"""What a child record's ParentId / GroupId / PermissionSetId must point at."""


def sf_id(prefix: str, number: int) -> str:
    """An 18-char Salesforce id: 15 case-sensitive chars plus the real case-checksum suffix."""
    base = f"{prefix}5g{number:010d}"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ012345"
    suffix = ""
    for chunk in range(3):
        bits = sum(1 << i for i, ch in enumerate(base[chunk * 5:chunk * 5 + 5]) if ch.isupper())
        suffix += alphabet[bits]
    return base + suffix


def now() -> str:
    """A timestamp as the REST API writes it: 2024-05-01T12:00:00.000+0000."""
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"
