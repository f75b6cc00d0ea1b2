# A whole title in one apply: its build, one fleet running it, and one zone per entry of
# `zones`, each with its data centers and the buffer rules of the `scaling` preset.

locals {
  # The buffer rules of each preset (a set: their order does not matter).
  presets = {
    steady = [{ min_active_sessions = 0, available_servers = 2, available_percent = null, available_predicted = null }]
    bursty = [
      { min_active_sessions = 0, available_servers = 2, available_percent = null, available_predicted = null },
      { min_active_sessions = 50, available_servers = null, available_percent = 25, available_predicted = null },
    ]
    predictive = [{ min_active_sessions = 0, available_servers = null, available_percent = null, available_predicted = 1 }]
    fixed      = []
  }
}

resource "fleetform_build" "this" {
  name    = var.name
  version = var.build_version
  source  = var.build_source
  sha256  = var.build_sha256
}

resource "fleetform_fleet" "this" {
  name                 = var.name
  build_id             = fleetform_build.this.id
  launch_path          = var.launch_path
  launch_parameters    = var.launch_parameters
  session_mode         = var.sessions_per_process > 1 ? "parallel" : "simple"
  sessions_per_process = var.sessions_per_process
  force_destroy        = var.force_destroy
}

resource "fleetform_zone" "this" {
  for_each = var.zones

  fleet_id                 = fleetform_fleet.this.id
  name                     = "${var.name}-${each.key}"
  scaling_mode             = var.scaling == "fixed" ? "fixed" : "auto"
  initial_server_processes = each.value.initial_server_processes
  wait_for_capacity        = var.wait_for_capacity

  dynamic "buffer_rule" {
    for_each = local.presets[var.scaling]
    content {
      min_active_sessions = buffer_rule.value.min_active_sessions
      available_servers   = buffer_rule.value.available_servers
      available_percent   = buffer_rule.value.available_percent
      available_predicted = buffer_rule.value.available_predicted
    }
  }

  dynamic "data_center" {
    for_each = each.value.data_centers
    content {
      name                 = data_center.key
      location             = data_center.value.location
      priority             = data_center.value.priority
      max_server_processes = data_center.value.max_server_processes

      machine_model {
        instance_type         = coalesce(data_center.value.instance_type, data_center.value.location)
        processes_per_machine = data_center.value.processes_per_machine
      }
    }
  }
}
