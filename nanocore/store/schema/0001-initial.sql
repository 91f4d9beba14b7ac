-- nanocore store, schema version 1: every entity of core-internals §2.2-2.3.
-- Referential rules live here so that no code path can break them: a pool cannot be deleted
-- while cells, instances or compute pools reference it, an address cannot be allocated twice.
-- Lists that are never queried by member (DNS servers, disks, tags, task members) are JSON text.

CREATE TABLE zone (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    name TEXT NOT NULL
);

CREATE TABLE storage_pool (
    name TEXT PRIMARY KEY,
    type TEXT NOT NULL CHECK (type IN ('nfs')),
    host TEXT NOT NULL,
    target TEXT NOT NULL
);

CREATE TABLE address_pool (
    name TEXT PRIMARY KEY,
    gateway TEXT NOT NULL,
    dns TEXT NOT NULL,
    provider TEXT NOT NULL CHECK (provider IN ('dhcp', 'cloudinit')),
    mode TEXT NOT NULL
);

CREATE TABLE address_range (
    seq INTEGER PRIMARY KEY,
    pool TEXT NOT NULL REFERENCES address_pool (name),
    start TEXT NOT NULL,
    "end" TEXT NOT NULL,
    netmask TEXT NOT NULL,
    kind TEXT NOT NULL,
    UNIQUE (pool, start)
);

CREATE TABLE compute_pool (
    name TEXT PRIMARY KEY,
    enabled INTEGER NOT NULL,
    network TEXT REFERENCES address_pool (name),
    storage TEXT REFERENCES storage_pool (name),
    failover INTEGER NOT NULL,
    CHECK (failover = 0 OR storage IS NOT NULL)
);
CREATE INDEX compute_pool_network ON compute_pool (network);
CREATE INDEX compute_pool_storage ON compute_pool (storage);

CREATE TABLE compute_cell (
    name TEXT PRIMARY KEY,
    pool TEXT REFERENCES compute_pool (name),
    enabled INTEGER NOT NULL,
    purge_pending INTEGER NOT NULL
);
CREATE INDEX compute_cell_pool ON compute_cell (pool);

CREATE TABLE system_template (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    admin TEXT NOT NULL,
    operating_system TEXT NOT NULL,
    disk TEXT NOT NULL,
    network TEXT NOT NULL,
    display TEXT NOT NULL,
    control TEXT NOT NULL,
    usb TEXT NOT NULL,
    tablet TEXT NOT NULL,
    created_time TEXT NOT NULL,
    modified_time TEXT NOT NULL
);

CREATE TABLE security_policy_group (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    user TEXT NOT NULL,
    "group" TEXT NOT NULL,
    description TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    is_global INTEGER NOT NULL,
    accept INTEGER NOT NULL
);

-- Rules are part of their group's value: rewritten with it, deleted with it.
CREATE TABLE security_policy_rule (
    group_id TEXT NOT NULL REFERENCES security_policy_group (id) ON DELETE CASCADE,
    position INTEGER NOT NULL,
    protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp', 'icmp')),
    source_address TEXT NOT NULL,
    target_address TEXT NOT NULL,
    target_port INTEGER NOT NULL,
    accept INTEGER NOT NULL,
    PRIMARY KEY (group_id, position),
    UNIQUE (group_id, protocol, source_address, target_port)
);

CREATE TABLE instance (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    "group" TEXT NOT NULL,
    pool TEXT NOT NULL REFERENCES compute_pool (name),
    cell TEXT NOT NULL REFERENCES compute_cell (name),
    cores INTEGER NOT NULL CHECK (cores > 0),
    memory INTEGER NOT NULL CHECK (memory > 0),
    disks TEXT NOT NULL,
    template TEXT NOT NULL,
    system TEXT NOT NULL,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL,
    lost INTEGER NOT NULL,
    migrating INTEGER NOT NULL,
    auto_start INTEGER NOT NULL,
    media_attached INTEGER NOT NULL,
    internal_assigned_address TEXT NOT NULL,
    internal_instance_address TEXT NOT NULL,
    internal_monitor_address TEXT NOT NULL,
    internal_monitor_port INTEGER NOT NULL,
    external_assigned_address TEXT NOT NULL,
    external_instance_address TEXT NOT NULL,
    external_monitor_address TEXT NOT NULL,
    external_monitor_port INTEGER NOT NULL,
    hardware_address TEXT NOT NULL,
    monitor_secret TEXT NOT NULL,
    cpu_priority INTEGER NOT NULL,
    read_speed INTEGER NOT NULL,
    write_speed INTEGER NOT NULL,
    read_iops INTEGER NOT NULL,
    write_iops INTEGER NOT NULL,
    receive_speed INTEGER NOT NULL,
    send_speed INTEGER NOT NULL,
    create_time TEXT NOT NULL,
    UNIQUE (pool, "group", name)
);
CREATE INDEX instance_cell ON instance (cell);

-- The owning instance is not a foreign key: allocations imported from Nano 1.4 belong to
-- instances that only their Cell knows until it reports (core-internals §2.5.3).
CREATE TABLE address_allocation (
    pool TEXT NOT NULL,
    range_start TEXT NOT NULL,
    address TEXT NOT NULL,
    instance TEXT NOT NULL,
    PRIMARY KEY (pool, address),
    FOREIGN KEY (pool, range_start) REFERENCES address_range (pool, start)
);
CREATE INDEX address_allocation_range ON address_allocation (pool, range_start);
CREATE INDEX address_allocation_instance ON address_allocation (instance);

CREATE TABLE media_image (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    "group" TEXT NOT NULL,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    format TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    version INTEGER NOT NULL,
    create_time TEXT NOT NULL,
    modify_time TEXT NOT NULL,
    UNIQUE ("group", name)
);

CREATE TABLE disk_image (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    "group" TEXT NOT NULL,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    format TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL CHECK (size >= 0),
    version INTEGER NOT NULL,
    create_time TEXT NOT NULL,
    modify_time TEXT NOT NULL,
    check_sum TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE ("group", name)
);

CREATE TABLE migration (
    id TEXT PRIMARY KEY,
    source_pool TEXT NOT NULL,
    source_cell TEXT NOT NULL,
    target_pool TEXT NOT NULL,
    target_cell TEXT NOT NULL,
    instances TEXT NOT NULL,
    finished INTEGER NOT NULL,
    progress INTEGER NOT NULL,
    error TEXT NOT NULL
);

CREATE TABLE batch_task (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    start_time REAL NOT NULL,
    latest_update REAL NOT NULL,
    finished INTEGER NOT NULL,
    guests TEXT NOT NULL
);
