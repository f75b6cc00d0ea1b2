resource "fleetform_zone" "example" {
  fleet_id                 = fleetform_fleet.example.id
  name                     = "eu-west"
  scaling_mode             = "auto"
  initial_server_processes = 8
  placement_strategy       = "pack"
  free_slots_min           = 2
  free_slots_max           = 8
  cooldown_minutes         = 0
  wait_for_capacity        = true

  # Keep 4 idle servers up to 100 active sessions, then 20% of the active ones.
  buffer_rule {
    min_active_sessions = 0
    available_servers   = 4
  }
  buffer_rule {
    min_active_sessions = 100
    available_percent   = 20
  }

  # Bare metal first; cloud VMs take the overflow.
  data_center {
    name                = "fra-metal"
    location            = "fra-metal"
    priority            = 0
    machine_type        = "bare_metal"
    bare_metal_machines = 4

    machine_model {
      instance_type         = "metal-32-core"
      processes_per_machine = 16
    }
  }

  data_center {
    name                 = "aws-eu-central-1"
    location             = "eu-central-1"
    priority             = 1
    machine_type         = "vm"
    max_server_processes = 1000

    machine_model {
      instance_type         = "c6i.2xlarge"
      processes_per_machine = 6
    }
    machine_model {
      instance_type         = "c5.2xlarge"
      processes_per_machine = 6
    }
  }

  timeouts {
    create = "15m"
    update = "15m"
    delete = "10m"
  }
}
