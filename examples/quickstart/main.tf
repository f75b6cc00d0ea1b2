# fleetform quickstart: one build, one fleet, one zone of local machines.
#
#   export FLEETFORM_ENDPOINT=http://127.0.0.1:7400   # where fleetformd listens
#   export FLEETFORM_TOKEN=...                          # the token fleetformd printed
#   terraform apply -var build_dir=/abs/path/to/dir/with/example-game-server

terraform {
  required_providers {
    fleetform = {
      source = "fleetform/fleetform"
    }
  }
}

# endpoint and token come from FLEETFORM_ENDPOINT and FLEETFORM_TOKEN.
provider "fleetform" {}

variable "build_dir" {
  description = "Absolute path of a directory holding the example-game-server binary."
  type        = string

  validation {
    condition     = startswith(var.build_dir, "/")
    error_message = "build_dir must be an absolute path."
  }
}

resource "fleetform_build" "game" {
  name    = "example-game-server"
  version = "quickstart"
  source  = "file://${var.build_dir}"
}

resource "fleetform_fleet" "game" {
  name              = "quickstart"
  description       = "fleetform quickstart fleet"
  build_id          = fleetform_build.game.id
  launch_path       = "example-game-server"
  launch_parameters = "--port {port}"

  # A demo: let `terraform destroy` end sessions still running on it.
  force_destroy = true
}

resource "fleetform_zone" "local" {
  fleet_id                 = fleetform_fleet.game.id
  name                     = "local"
  initial_server_processes = 2

  buffer_rule {
    available_servers = 1
  }

  data_center {
    name                 = "local-1"
    location             = "local"
    max_server_processes = 4

    machine_model {
      instance_type         = "local"
      processes_per_machine = 2
    }
  }
}

output "fleet_id" {
  value = fleetform_fleet.game.id
}

output "zone_id" {
  value = fleetform_zone.local.id
}

output "zone_name" {
  value = fleetform_zone.local.name
}
