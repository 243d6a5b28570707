-- A pr1 ledger at schema version 2 as pr1d wrote it before v3, with a few rows in every table:
-- the ledger's tables, the registry's (approvals, deployment_state) as the registry's create_all made them,
-- and the counter tables and triggers made at open. sqlite3's .dump of a real one; do not edit the DDL.
BEGIN TRANSACTION;
CREATE TABLE agents (
	id VARCHAR NOT NULL, 
	model VARCHAR NOT NULL, 
	profile VARCHAR NOT NULL, 
	hold BOOLEAN NOT NULL, 
	hold_reason VARCHAR, 
	hold_by VARCHAR, 
	current_version VARCHAR, 
	eval_cursor VARCHAR, 
	health JSON, 
	baseline JSON, 
	monitor JSON, 
	signals JSON, 
	last_polled_at FLOAT, 
	created_at FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "agents" VALUES('a1','tiny-base','default',0,NULL,NULL,'v-00000000000000b1','e:3','{"ok": true}','{"mean": 0.9, "n": 30, "source": "first_k", "frozen_at": 5.0}',NULL,'{}',20.0,1.0,20.0);
INSERT INTO "agents" VALUES('a2','tiny-base','default',1,'maintenance','alice',NULL,NULL,NULL,NULL,NULL,NULL,NULL,1.0,2.0);
CREATE TABLE approvals (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	user VARCHAR NOT NULL, 
	reason VARCHAR NOT NULL, 
	ts FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_approval_user UNIQUE (run_id, user)
);
INSERT INTO "approvals" VALUES(1,1,'alice','ok',17.5);
INSERT INTO "approvals" VALUES(2,2,'carol','looks fine',16.5);
CREATE TABLE artifacts (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	stage_id INTEGER, 
	name VARCHAR NOT NULL, 
	kind VARCHAR NOT NULL, 
	path VARCHAR NOT NULL, 
	sha256 VARCHAR NOT NULL, 
	size INTEGER NOT NULL, 
	meta JSON, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "artifacts" VALUES(1,1,NULL,'model_version','model_version','/m/a1/v-00000000000000b1','ab12',1024,'{"version_id": "v-00000000000000b1", "agent_id": "a1"}',16.5);
CREATE TABLE audit (
	id INTEGER NOT NULL, 
	ts FLOAT NOT NULL, 
	actor VARCHAR NOT NULL, 
	action VARCHAR NOT NULL, 
	entity VARCHAR NOT NULL, 
	entity_id VARCHAR NOT NULL, 
	from_state VARCHAR, 
	to_state VARCHAR, 
	reason VARCHAR, 
	details JSON, 
	PRIMARY KEY (id)
);
INSERT INTO "audit" VALUES(1,14.0,'daemon','create','run','1',NULL,'queued',NULL,'{"agent": "a1", "kind": "full"}');
INSERT INTO "audit" VALUES(2,18.0,'alice','transition','run','1','awaiting_approval','promoted','approved by alice: ok',NULL);
INSERT INTO "audit" VALUES(3,18.0,'alice','promote','deployment','2','v-00000000000000a0','v-00000000000000b1','approved by alice: ok','{"agent": "a1", "run": 1}');
CREATE TABLE change_counters (name VARCHAR PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO "change_counters" VALUES('registry',10);
CREATE TABLE deployment_state (
	deployment_id INTEGER NOT NULL, 
	agent_id VARCHAR NOT NULL, 
	version_id VARCHAR NOT NULL, 
	body JSON, 
	push_attempts INTEGER NOT NULL, 
	push_error VARCHAR, 
	last_attempt_at FLOAT, 
	pushed_at FLOAT, 
	since_ts FLOAT, 
	expected_score FLOAT, 
	watch JSON, 
	PRIMARY KEY (deployment_id)
);
INSERT INTO "deployment_state" VALUES(1,'a1','v-00000000000000a0','{"profile": "default", "model_version": "tiny-base", "policy": {}}',0,NULL,NULL,3.0,NULL,NULL,NULL);
INSERT INTO "deployment_state" VALUES(2,'a1','v-00000000000000b1','{"profile": "default", "model_version": "v-00000000000000b1", "policy": {"branch_count": 4}}',2,'HTTP 503 from the agent manager',19.0,NULL,12.0,0.93,'{"state": "insufficient"}');
CREATE TABLE deployments (
	id INTEGER NOT NULL, 
	agent_id VARCHAR NOT NULL, 
	version_id VARCHAR NOT NULL, 
	action VARCHAR NOT NULL, 
	ts FLOAT NOT NULL, 
	actor VARCHAR NOT NULL, 
	reason VARCHAR, 
	run_id INTEGER, 
	profile_pushed BOOLEAN NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "deployments" VALUES(1,'a1','v-00000000000000a0','initial',3.0,'daemon','the model in service before pr1''s first promotion',NULL,1);
INSERT INTO "deployments" VALUES(2,'a1','v-00000000000000b1','promote',18.0,'alice','approved by alice: ok',1,0);
CREATE TABLE metrics (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	stage_id INTEGER, 
	name VARCHAR NOT NULL, 
	step INTEGER, 
	value FLOAT NOT NULL, 
	ts FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO "metrics" VALUES(1,1,1,'loss',1,0.5,14.8);
INSERT INTO "metrics" VALUES(2,1,1,'loss',2,0.25,14.9);
CREATE TABLE model_versions (
	id VARCHAR NOT NULL, 
	agent_id VARCHAR NOT NULL, 
	run_id INTEGER, 
	parent_id VARCHAR, 
	dataset_version VARCHAR, 
	config_hash VARCHAR, 
	path VARCHAR NOT NULL, 
	sha256 VARCHAR NOT NULL, 
	created_at FLOAT NOT NULL, 
	meta JSON, 
	PRIMARY KEY (id)
);
INSERT INTO "model_versions" VALUES('v-00000000000000a0','a1',NULL,NULL,NULL,NULL,'/m/a1/v-00000000000000a0','cd34',2.0,'{"served_as": "tiny-base", "profile": "default", "policy": {}}');
INSERT INTO "model_versions" VALUES('v-00000000000000b1','a1',1,'v-00000000000000a0','ds-1','cfg-1','/m/a1/v-00000000000000b1','ab12',16.5,'{"policy": {"branch_count": 4}}');
CREATE TABLE run_state_counts (state VARCHAR PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO "run_state_counts" VALUES('promoted',1);
INSERT INTO "run_state_counts" VALUES('awaiting_approval',1);
CREATE TABLE runs (
	id INTEGER NOT NULL, 
	agent_id VARCHAR NOT NULL, 
	kind VARCHAR NOT NULL, 
	state VARCHAR NOT NULL, 
	reason VARCHAR, 
	idempotency_key VARCHAR, 
	trigger_id INTEGER, 
	params JSON, 
	created_by VARCHAR NOT NULL, 
	created_at FLOAT NOT NULL, 
	updated_at FLOAT NOT NULL, 
	started_at FLOAT, 
	finished_at FLOAT, 
	current_stage VARCHAR, 
	gate JSON, 
	PRIMARY KEY (id), 
	UNIQUE (idempotency_key)
);
INSERT INTO "runs" VALUES(1,'a1','full','promoted','approved by alice: ok','trig-1',1,'{}','daemon',14.0,18.0,14.5,17.0,'gate','{"outcome": "pass", "expected_score": 0.93}');
INSERT INTO "runs" VALUES(2,'a2','sft','awaiting_approval',NULL,NULL,NULL,'{"steps": 10}','bob',15.0,16.0,15.5,16.0,'gate','{"outcome": "inconclusive", "flagged": true}');
CREATE TABLE schema_meta (
	"key" VARCHAR NOT NULL, 
	value VARCHAR NOT NULL, 
	PRIMARY KEY ("key")
);
INSERT INTO "schema_meta" VALUES('schema_version','2');
CREATE TABLE score_samples (
	id INTEGER NOT NULL, 
	agent_id VARCHAR NOT NULL, 
	eval_id VARCHAR NOT NULL, 
	ts FLOAT NOT NULL, 
	weighted_score FLOAT, 
	status VARCHAR NOT NULL, 
	rubric JSON, 
	task_id VARCHAR, 
	tier VARCHAR, 
	model_version VARCHAR, 
	ingested_at FLOAT NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_sample_eval UNIQUE (agent_id, eval_id)
);
INSERT INTO "score_samples" VALUES(1,'a1','e1',10.0,0.91,'pass','{"safety": true}','t1','easy','tiny-base',11.0);
INSERT INTO "score_samples" VALUES(2,'a1','e2',12.0,0.42,'fail','{"safety": true}','t2','hard','tiny-base',13.0);
INSERT INTO "score_samples" VALUES(3,'a1','e3',19.0,0.95,'pass',NULL,'t3','easy','v-00000000000000b1',20.0);
CREATE TABLE stages (
	id INTEGER NOT NULL, 
	run_id INTEGER NOT NULL, 
	seq INTEGER NOT NULL, 
	name VARCHAR NOT NULL, 
	state VARCHAR NOT NULL, 
	attempt INTEGER NOT NULL, 
	pid INTEGER, 
	started_at FLOAT, 
	finished_at FLOAT, 
	exit_code INTEGER, 
	error VARCHAR, 
	checkpoint VARCHAR, 
	progress FLOAT, 
	eta_s FLOAT, 
	log_path VARCHAR, 
	result JSON, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_stage_seq UNIQUE (run_id, seq)
);
INSERT INTO "stages" VALUES(1,1,0,'dataset','succeeded',1,NULL,14.5,15.0,0,NULL,NULL,NULL,NULL,NULL,'{"rows": 600}');
INSERT INTO "stages" VALUES(2,1,1,'gate','succeeded',1,NULL,15.0,17.0,0,NULL,NULL,NULL,NULL,NULL,NULL);
INSERT INTO "stages" VALUES(3,2,0,'sft','succeeded',2,NULL,15.5,16.0,0,NULL,NULL,NULL,NULL,NULL,NULL);
CREATE TABLE triggers (
	id INTEGER NOT NULL, 
	agent_id VARCHAR NOT NULL, 
	ts FLOAT NOT NULL, 
	signal VARCHAR NOT NULL, 
	job_kind VARCHAR NOT NULL, 
	evidence JSON, 
	run_id INTEGER, 
	suppressed VARCHAR, 
	PRIMARY KEY (id)
);
INSERT INTO "triggers" VALUES(1,'a1',14.0,'windowed_score','full','{"mean": 0.66}',1,NULL);
CREATE INDEX ix_samples_agent_ts ON score_samples (agent_id, ts);
CREATE INDEX ix_samples_agent_version_ts ON score_samples (agent_id, model_version, ts);
CREATE INDEX ix_triggers_agent_id ON triggers (agent_id);
CREATE INDEX ix_runs_state ON runs (state);
CREATE INDEX ix_runs_agent ON runs (agent_id, id);
CREATE INDEX ix_stages_run_id ON stages (run_id);
CREATE INDEX ix_metrics_run_name ON metrics (run_id, name, step);
CREATE INDEX ix_artifacts_run_id ON artifacts (run_id);
CREATE INDEX ix_model_versions_agent_id ON model_versions (agent_id);
CREATE INDEX ix_deploy_agent_ts ON deployments (agent_id, ts);
CREATE INDEX ix_audit_entity ON audit (entity, entity_id);
CREATE INDEX ix_approvals_run_id ON approvals (run_id);
CREATE INDEX ix_depstate_agent ON deployment_state (agent_id, deployment_id);
CREATE TRIGGER trg_approvals_registry_delete AFTER DELETE ON approvals BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_approvals_registry_insert AFTER INSERT ON approvals BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_approvals_registry_update AFTER UPDATE ON approvals BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_deployment_state_registry_delete AFTER DELETE ON deployment_state BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_deployment_state_registry_insert AFTER INSERT ON deployment_state BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_deployment_state_registry_update AFTER UPDATE ON deployment_state BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_deployments_registry_delete AFTER DELETE ON deployments BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_deployments_registry_insert AFTER INSERT ON deployments BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_deployments_registry_update AFTER UPDATE ON deployments BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_model_versions_registry_delete AFTER DELETE ON model_versions BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_model_versions_registry_insert AFTER INSERT ON model_versions BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_model_versions_registry_update AFTER UPDATE ON model_versions BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_runs_count_delete AFTER DELETE ON runs BEGIN INSERT INTO run_state_counts (state, n) VALUES (OLD.state, -1) ON CONFLICT (state) DO UPDATE SET n = n + -1; END;
CREATE TRIGGER trg_runs_count_insert AFTER INSERT ON runs BEGIN INSERT INTO run_state_counts (state, n) VALUES (NEW.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_runs_count_update AFTER UPDATE OF state ON runs WHEN NEW.state IS NOT OLD.state BEGIN INSERT INTO run_state_counts (state, n) VALUES (OLD.state, -1) ON CONFLICT (state) DO UPDATE SET n = n + -1; INSERT INTO run_state_counts (state, n) VALUES (NEW.state, 1) ON CONFLICT (state) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_runs_registry_delete AFTER DELETE ON runs WHEN OLD.state = 'awaiting_approval' BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_runs_registry_insert AFTER INSERT ON runs WHEN NEW.state = 'awaiting_approval' BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
CREATE TRIGGER trg_runs_registry_update AFTER UPDATE ON runs WHEN NEW.state = 'awaiting_approval' OR OLD.state = 'awaiting_approval' BEGIN INSERT INTO change_counters (name, n) VALUES ('registry', 1) ON CONFLICT (name) DO UPDATE SET n = n + 1; END;
COMMIT;
