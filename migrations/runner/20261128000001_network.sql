-- The bridge network's address management and published ports (queries in
-- runner/src/daemon/network.rs).
--
-- One address per container on the daemon's bridge, given at create and
-- freed with the container's row at rm (ON DELETE CASCADE): the primary key
-- means no address is ever handed out twice.
CREATE TABLE network_addresses (
    address TEXT PRIMARY KEY NOT NULL,   -- dotted IPv4
    container_id TEXT NOT NULL UNIQUE REFERENCES containers (id) ON DELETE CASCADE
);

-- The ports a running container publishes (random host ports resolved), so
-- a restarted daemon listens on the same ones again. Rows go when it stops.
CREATE TABLE network_ports (
    container_id TEXT NOT NULL REFERENCES containers (id) ON DELETE CASCADE,
    protocol TEXT NOT NULL CHECK (protocol IN ('tcp', 'udp')),
    container_port INTEGER NOT NULL,
    host_ip TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    PRIMARY KEY (container_id, protocol, container_port, host_ip, host_port)
);
